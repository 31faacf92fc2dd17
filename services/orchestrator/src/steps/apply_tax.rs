//! v2: sales tax per line from finance's rate table where the order ships to, recorded on the
//! order; what is authorized and captured includes it. Nothing to undo (a failed order's tax is
//! moot).

use erp_proto::{finance, order};

use crate::ctx::Ctx;
use crate::outcome::{Outcome, StepError, StepResult};
use crate::steps::{Call, Handlers, money};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: None,
    summary: |_| String::new(),
};

/// Asks finance for each line's tax where the order ships to, records it on the order, and
/// makes it part of what is authorized and captured.
async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    let Call {
        p, key, timeout: t, ..
    } = c;
    let o = ctx
        .order
        .as_ref()
        .ok_or_else(|| StepError::missing("order"))?;
    if o.jurisdiction.is_empty() || o.lines.is_empty() {
        return Ok(Outcome::Next);
    }
    let calc = p
        .ports
        .finance
        .calculate_tax(
            finance::CalculateTaxRequest {
                jurisdiction: o.jurisdiction.clone(),
                lines: o
                    .lines
                    .iter()
                    .map(|l| finance::TaxableLine {
                        line_id: l.line_id.clone(),
                        tax_class: if l.tax_class.is_empty() {
                            "standard".into()
                        } else {
                            l.tax_class.clone()
                        },
                        amount: money(l.unit_price_minor * l.quantity, &o.currency),
                    })
                    .collect(),
            },
            t,
        )
        .await?;
    p.ports
        .order
        .record_tax(
            order::RecordTaxRequest {
                idempotency_key: key.to_owned(),
                order_id: o.order_id.clone(),
                jurisdiction: o.jurisdiction.clone(),
                lines: calc
                    .lines
                    .iter()
                    .map(|l| order::LineTaxAmount {
                        line_id: l.line_id.clone(),
                        rate_bps: l.rate_bps,
                        tax: l.tax.clone(),
                    })
                    .collect(),
            },
            t,
        )
        .await?;
    let tax = calc.total_tax.map_or(0, |m| m.amount_minor);
    if let Some(o) = ctx.order.as_mut() {
        o.tax_minor = tax;
        o.total_minor = o.subtotal_minor + tax;
        for l in &mut o.lines {
            l.tax_minor = calc
                .lines
                .iter()
                .find(|c| c.line_id == l.line_id)
                .and_then(|c| c.tax.as_ref())
                .map_or(0, |m| m.amount_minor);
        }
    }
    Ok(Outcome::Next)
}
