//! Sales channels: their currency, service levels, fees and terms.

use super::*;

impl OrderApi {
    pub(super) async fn upsert_channel(
        &self,
        caller: &Caller,
        req: UpsertChannelRequest,
    ) -> ApiResult<UpsertChannelResponse> {
        let Some(ch) = req.channel else {
            return Err(ApiError::invalid("channel", "is required"));
        };
        let mut v = Violations::new();
        v.code("channel.code", &ch.code);
        v.text("channel.name", &ch.name, 200);
        let kind = ChannelKind::try_from(ch.kind).unwrap_or(ChannelKind::Unspecified);
        v.check(
            kind != ChannelKind::Unspecified,
            "channel.kind",
            "must be set",
        );
        v.currency("channel.currency", &ch.currency);
        v.check(
            !ch.service_levels.is_empty(),
            "channel.service_levels",
            "must list at least one",
        );
        for (i, s) in ch.service_levels.iter().enumerate() {
            v.code(&format!("channel.service_levels[{i}]"), s);
        }
        v.check(
            (0..=10_000).contains(&ch.commission_bps),
            "channel.commission_bps",
            "must be 0..=10000",
        );
        v.non_negative("channel.fixed_fee_minor", ch.fixed_fee_minor);
        v.check(
            ch.net_terms_days >= 0,
            "channel.net_terms_days",
            "must not be negative",
        );
        // Compiled for every order of the channel: kept short.
        v.optional_text("channel.external_id_pattern", &ch.external_id_pattern, 200);
        if !ch.external_id_pattern.is_empty() && regex::Regex::new(&ch.external_id_pattern).is_err()
        {
            v.add(
                "channel.external_id_pattern",
                "is not a valid regular expression",
            );
        }
        v.optional_text("reason", &req.reason, 500);
        v.finish()?;
        let txn = self.db.begin().await?;
        let existing = store::channel(&txn, &ch.code, true).await?;
        let before = existing.clone().map(|m| channel_state(&channel_to_wire(m)));
        let am = channel::ActiveModel {
            code: Set(ch.code.clone()),
            name: Set(ch.name.clone()),
            kind: Set(kind_name(kind).to_owned()),
            currency: Set(ch.currency.clone()),
            service_levels: Set(ch.service_levels.join(",")),
            commission_bps: Set(ch.commission_bps),
            fixed_fee_minor: Set(ch.fixed_fee_minor),
            external_id_pattern: Set(ch.external_id_pattern.clone()),
            ship_complete: Set(ch.ship_complete),
            net_terms_days: Set(ch.net_terms_days),
            updated_at_ms: Set(now_ms()),
        };
        let model = if existing.is_some() {
            am.update(&txn).await?
        } else {
            am.insert(&txn).await?
        };
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("channel:{}", model.code),
                reason: &req.reason,
                before,
                after: Some(channel_state(&channel_to_wire(model.clone()))),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(UpsertChannelResponse {
            channel: Some(channel_to_wire(model)),
        })
    }
}
