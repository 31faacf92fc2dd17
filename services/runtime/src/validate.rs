//! Request validation that collects every bad field, so a client learns all of them at once.

use crate::error::{ApiError, ApiResult};

/// Collects field violations; `finish` turns them into INVALID_ARGUMENT.
#[derive(Debug, Default)]
pub struct Violations(Vec<(String, String)>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push((field.into(), description.into()));
    }

    pub fn check(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    /// A required, trimmed, bounded text field.
    pub fn text(&mut self, field: &str, value: &str, max_len: usize) {
        if value.trim().is_empty() {
            self.add(field, "must not be empty");
        } else if value.len() > max_len {
            self.add(field, format!("must be at most {max_len} bytes"));
        }
    }

    /// An optional text field: empty, or at most `max_len` bytes.
    pub fn optional_text(&mut self, field: &str, value: &str, max_len: usize) {
        if value.len() > max_len {
            self.add(field, format!("must be at most {max_len} bytes"));
        }
    }

    /// Who acted and why, when given: an id of at most 100 bytes, a reason of at most 500.
    pub fn actor(&mut self, field: &str, actor: Option<&erp_proto::common::Actor>) {
        if let Some(a) = actor {
            self.optional_text(&format!("{field}.id"), &a.id, 100);
            self.optional_text(&format!("{field}.reason"), &a.reason, 500);
        }
    }

    /// The document a movement came from, when given: kind and id of at most 100 bytes each.
    pub fn source(&mut self, field: &str, source: Option<&erp_proto::common::SourceDocument>) {
        if let Some(s) = source {
            self.optional_text(&format!("{field}.kind"), &s.kind, 100);
            self.optional_text(&format!("{field}.id"), &s.id, 100);
        }
    }

    /// A code: 1..=64 characters of `A-Z a-z 0-9 - _ .`.
    pub fn code(&mut self, field: &str, value: &str) {
        if let Err(e) = check_code(value) {
            self.add(field, e);
        }
    }

    /// A count or an amount in 1..=its cap ([`cap_of`]).
    pub fn positive(&mut self, field: &str, value: i64) {
        if value <= 0 {
            self.add(field, format!("must be positive, got {value}"));
        } else {
            self.capped(field, value);
        }
    }

    /// A count or an amount in 0..=its cap ([`cap_of`]).
    pub fn non_negative(&mut self, field: &str, value: i64) {
        if value < 0 {
            self.add(field, format!("must not be negative, got {value}"));
        } else {
            self.capped(field, value);
        }
    }

    fn capped(&mut self, field: &str, value: i64) {
        let cap = cap_of(field);
        if value > cap {
            self.add(field, format!("must be at most {cap}, got {value}"));
        }
    }

    pub fn currency(&mut self, field: &str, value: &str) {
        if !is_currency(value) {
            self.add(
                field,
                format!("must be an ISO 4217 code of three upper-case letters, got {value:?}"),
            );
        }
    }

    /// A UUID as issued by the services.
    pub fn id(&mut self, field: &str, value: &str) {
        if uuid::Uuid::parse_str(value).is_err() {
            self.add(field, format!("must be a UUID, got {value:?}"));
        }
    }

    /// Idempotency keys are required on every mutation.
    pub fn idempotency_key(&mut self, value: &str) {
        if value.trim().is_empty() {
            self.add("idempotency_key", "must not be empty");
        } else if value.len() > 200 {
            self.add("idempotency_key", "must be at most 200 bytes");
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn finish(self) -> ApiResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}

/// The largest amount of money any request may carry, in minor units (10^12: ten billion
/// dollars). Sums of capped amounts and products with capped quantities stay far from
/// `i64::MAX`, and are checked anyway.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;
/// The largest quantity any request may carry, in base units (10^9).
pub const MAX_QUANTITY: i64 = 1_000_000_000;

/// The cap of a numeric field: quantities (a field named `...quantity`) at [`MAX_QUANTITY`],
/// everything else (amounts, grams, millimetres, capacities) at [`MAX_AMOUNT_MINOR`].
pub fn cap_of(field: &str) -> i64 {
    if field.ends_with("quantity") {
        MAX_QUANTITY
    } else {
        MAX_AMOUNT_MINOR
    }
}

pub fn check_code(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 64 {
        return Err("must be at most 64 characters".into());
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "may hold only letters, digits, '-', '_' and '.', got {value:?}"
        ));
    }
    Ok(())
}

pub fn is_currency(value: &str) -> bool {
    value.len() == 3 && value.chars().all(|c| c.is_ascii_uppercase())
}

/// Page size: 0 means the default; capped.
pub fn page_size(requested: i32) -> ApiResult<u64> {
    match requested {
        0 => Ok(50),
        n if n < 0 => Err(ApiError::invalid("page_size", "must not be negative")),
        n => Ok(u64::try_from(n.min(500)).unwrap_or(500)),
    }
}

/// Page tokens are opaque to clients; here they are the offset as text.
/// The largest offset a page token may carry: beyond any table this suite keeps, and far below
/// what the SQL drivers accept (an offset past `i64::MAX` panicked inside sqlx).
pub const MAX_PAGE_OFFSET: u64 = 1 << 40;

pub fn page_offset(token: &str) -> ApiResult<u64> {
    if token.is_empty() {
        return Ok(0);
    }
    match token.parse::<u64>() {
        Ok(offset) if offset <= MAX_PAGE_OFFSET => Ok(offset),
        Ok(_) => Err(ApiError::invalid(
            "page_token",
            "is beyond the range of any page this service issued",
        )),
        Err(_) => Err(ApiError::invalid(
            "page_token",
            "is not a token this service issued",
        )),
    }
}

/// A list request's status filter as the stored status name: `None` for the enum's
/// `..._UNSPECIFIED` (no filter), else its wire name without `prefix`, lower-cased
/// (`ORDER_STATUS_BACKORDERED` → `backordered`). `wire_name` is the enum's name of the request
/// value (`Enum::try_from(v).map(|s| s.as_str_name())`); a value the enum does not know is
/// INVALID_ARGUMENT naming `status`.
pub fn status_filter<E>(
    wire_name: Result<&'static str, E>,
    prefix: &str,
) -> ApiResult<Option<String>> {
    let name = wire_name.map_err(|_| ApiError::invalid("status", "is not a known status"))?;
    let short = name.trim_start_matches(prefix);
    Ok((short != "UNSPECIFIED").then(|| short.to_lowercase()))
}

pub fn next_page_token(offset: u64, returned: usize, page_size: u64) -> String {
    match offset.checked_add(page_size) {
        Some(next) if returned as u64 == page_size && next <= MAX_PAGE_OFFSET => next.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_filter_is_the_stored_name_or_none() {
        assert_eq!(
            status_filter::<()>(Ok("ORDER_STATUS_BACKORDERED"), "ORDER_STATUS_").unwrap(),
            Some("backordered".to_owned())
        );
        assert_eq!(
            status_filter::<()>(Ok("ORDER_STATUS_UNSPECIFIED"), "ORDER_STATUS_").unwrap(),
            None
        );
        assert!(status_filter::<()>(Err(()), "ORDER_STATUS_").is_err());
    }

    #[test]
    fn collects_every_violation() {
        let mut v = Violations::new();
        v.code("sku", "");
        v.positive("quantity", 0);
        v.currency("currency", "usd");
        v.id("order_id", "nope");
        match v.finish() {
            Err(ApiError::InvalidArgument(list)) => {
                let fields: Vec<_> = list.iter().map(|(f, _)| f.as_str()).collect();
                assert_eq!(fields, ["sku", "quantity", "currency", "order_id"]);
            }
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn free_text_is_bounded() {
        let mut v = Violations::new();
        let long = "x".repeat(501);
        v.optional_text("note", "", 10);
        v.optional_text("memo", &long, 500);
        v.actor(
            "actor",
            Some(&erp_proto::common::Actor {
                id: "ops".into(),
                reason: long.clone(),
            }),
        );
        v.source(
            "source",
            Some(&erp_proto::common::SourceDocument {
                kind: "manual".into(),
                id: long,
            }),
        );
        v.actor("none", None);
        let fields: Vec<String> = match v.finish() {
            Err(ApiError::InvalidArgument(list)) => list.into_iter().map(|(f, _)| f).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(fields, ["memo", "actor.reason", "source.id"]);
    }

    #[test]
    fn amounts_and_quantities_are_capped() {
        let mut v = Violations::new();
        v.positive("amount.amount_minor", i64::MAX);
        v.positive("amount.amount_minor", MAX_AMOUNT_MINOR);
        v.positive("lines[0].quantity", MAX_QUANTITY + 1);
        v.non_negative("lines[1].quantity", MAX_QUANTITY);
        v.non_negative("unit_price.amount_minor", -1);
        let fields: Vec<String> = match v.finish() {
            Err(ApiError::InvalidArgument(list)) => list.into_iter().map(|(f, _)| f).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fields,
            [
                "amount.amount_minor",
                "lines[0].quantity",
                "unit_price.amount_minor"
            ]
        );
    }

    #[test]
    fn codes_refuse_spaces_and_overlong() {
        assert!(check_code("SKU-1_a.b").is_ok());
        assert!(check_code("has space").is_err());
        assert!(check_code(&"x".repeat(65)).is_err());
    }

    #[test]
    fn paging() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(10_000).unwrap(), 500);
        assert!(page_size(-1).is_err());
        assert_eq!(page_offset("").unwrap(), 0);
        assert!(page_offset("abc").is_err());
        assert!(page_offset("18446744073709551615").is_err());
        assert_eq!(page_offset("1099511627776").unwrap(), MAX_PAGE_OFFSET);
        assert_eq!(next_page_token(u64::MAX - 5, 10, 10), "");
        assert_eq!(next_page_token(0, 10, 10), "10");
        assert_eq!(next_page_token(0, 3, 10), "");
    }
}
