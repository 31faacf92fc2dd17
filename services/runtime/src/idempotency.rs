//! Idempotency keys stored in the same transaction as the effect they guard. A repeat of the
//! same request answers with the stored response; the same key with a different request is
//! refused, because silently answering it would hide a client bug.

use prost::Message;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, ConnectionTrait};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};

pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub scope: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idem_key: String,
        pub request_hash: String,
        pub response: Vec<u8>,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Stored instead of a request fingerprint when a compensation ran before its forward action.
const TOMBSTONE: &str = "tombstone";

/// Saga keys are `<saga>:<step>:forward` and `<saga>:<step>:compensate`.
pub fn forward_key_of(compensation_key: &str) -> Option<String> {
    compensation_key
        .strip_suffix(":compensate")
        .map(|stem| format!("{stem}:forward"))
}

/// Called by a compensation inside its transaction: if its forward action never arrived, leave
/// a tombstone under the forward key so that a late arrival is refused instead of applied.
pub async fn tombstone_forward<C: ConnectionTrait>(
    conn: &C,
    forward_scope: &str,
    compensation_key: &str,
) -> ApiResult<()> {
    let Some(forward) = forward_key_of(compensation_key) else {
        return Ok(());
    };
    if exists(conn, forward_scope, &forward).await? {
        return Ok(());
    }
    entity::ActiveModel {
        scope: Set(forward_scope.to_owned()),
        idem_key: Set(forward),
        request_hash: Set(TOMBSTONE.to_owned()),
        response: Set(Vec::new()),
        created_at_ms: Set(crate::time::now_ms()),
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// What the forward action a compensation undoes did, as far as this service recorded it.
#[derive(Debug)]
pub enum Forward<R> {
    /// The key is not a saga compensation key: the caller decides what to undo by other means.
    Unrelated,
    /// The forward action never happened here (or was already refused): nothing to undo.
    Never,
    /// The forward action happened and answered this.
    Did(R),
}

/// Looks up the response the forward action of `compensation_key` recorded, so that a
/// compensation undoes exactly what that action created (an order's second shipment must not
/// void the first one's label). Call before [`tombstone_forward`].
pub async fn forward_outcome<C: ConnectionTrait, R: Message + Default>(
    conn: &C,
    forward_scope: &str,
    compensation_key: &str,
) -> ApiResult<Forward<R>> {
    let Some(forward) = forward_key_of(compensation_key) else {
        return Ok(Forward::Unrelated);
    };
    let Some(row) = entity::Entity::find_by_id((forward_scope.to_owned(), forward.clone()))
        .one(conn)
        .await?
    else {
        return Ok(Forward::Never);
    };
    if row.request_hash == TOMBSTONE {
        return Ok(Forward::Never);
    }
    R::decode(row.response.as_slice())
        .map(Forward::Did)
        .map_err(|e| {
            ApiError::Internal(format!(
                "stored response for {forward_scope} {forward}: {e}"
            ))
        })
}

/// Fingerprint of a request, to tell a true repeat from a reused key.
pub fn fingerprint<M: Message>(request: &M) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

/// The stored response for `(scope, key)`, if this request was handled before.
pub async fn lookup<C: ConnectionTrait, R: Message + Default>(
    conn: &C,
    scope: &str,
    key: &str,
    request_hash: &str,
) -> ApiResult<Option<R>> {
    let Some(row) = entity::Entity::find_by_id((scope.to_owned(), key.to_owned()))
        .one(conn)
        .await?
    else {
        return Ok(None);
    };
    judge(&row, scope, key, request_hash).map(Some)
}

/// The answer a stored key gives to a request with `request_hash` (for callers that looked many
/// keys up at once).
pub fn judge<R: Message + Default>(
    row: &entity::Model,
    scope: &str,
    key: &str,
    request_hash: &str,
) -> ApiResult<R> {
    if row.request_hash == TOMBSTONE {
        return Err(ApiError::precondition(
            "ALREADY_COMPENSATED",
            format!("{scope} {key:?} was compensated before it arrived; refusing the late request"),
        ));
    }
    if row.request_hash != request_hash {
        return Err(ApiError::AlreadyExists(format!(
            "idempotency key {key:?} was already used for a different {scope} request"
        )));
    }
    R::decode(row.response.as_slice())
        .map_err(|e| ApiError::Internal(format!("stored response for {scope} {key}: {e}")))
}

/// A row recording `response` under `(scope, key)`, for bulk inserts.
pub fn row<R: Message>(
    scope: &str,
    key: &str,
    request_hash: &str,
    response: &R,
) -> entity::ActiveModel {
    entity::ActiveModel {
        scope: Set(scope.to_owned()),
        idem_key: Set(key.to_owned()),
        request_hash: Set(request_hash.to_owned()),
        response: Set(response.encode_to_vec()),
        created_at_ms: Set(crate::time::now_ms()),
    }
}

/// Records the response of `(scope, key)`; call inside the transaction that made the effect.
pub async fn record<C: ConnectionTrait, R: Message>(
    conn: &C,
    scope: &str,
    key: &str,
    request_hash: &str,
    response: &R,
) -> ApiResult<()> {
    entity::ActiveModel {
        scope: Set(scope.to_owned()),
        idem_key: Set(key.to_owned()),
        request_hash: Set(request_hash.to_owned()),
        response: Set(response.encode_to_vec()),
        created_at_ms: Set(crate::time::now_ms()),
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// Whether a key exists at all (used for tombstones: a compensation that ran before its forward
/// action records one so that the late forward action is refused).
pub async fn exists<C: ConnectionTrait>(conn: &C, scope: &str, key: &str) -> ApiResult<bool> {
    Ok(
        entity::Entity::find_by_id((scope.to_owned(), key.to_owned()))
            .one(conn)
            .await?
            .is_some(),
    )
}

/// What [`begin`] found: the answer to an earlier identical request, or a fresh transaction.
pub enum Begun<R> {
    Replay(R),
    New(sea_orm::DatabaseTransaction, Guard),
}

/// The key of a mutation in progress; [`Guard::commit`] stores the response with the effect.
pub struct Guard {
    scope: &'static str,
    key: String,
    hash: String,
}

/// Opens the transaction of an idempotent mutation: a repeat of the same request (same key,
/// same content) gets its stored response back, a reused key with other content is refused.
pub async fn begin<Q: Message, R: Message + Default>(
    db: &sea_orm::DatabaseConnection,
    scope: &'static str,
    key: &str,
    request: &Q,
) -> ApiResult<Begun<R>> {
    let hash = fingerprint(request);
    let txn = sea_orm::TransactionTrait::begin(db).await?;
    if let Some(previous) = lookup(&txn, scope, key, &hash).await? {
        return Ok(Begun::Replay(previous));
    }
    Ok(Begun::New(
        txn,
        Guard {
            scope,
            key: key.to_owned(),
            hash,
        },
    ))
}

impl Guard {
    /// Records the response and commits the effect with it.
    pub async fn commit<R: Message>(
        self,
        txn: sea_orm::DatabaseTransaction,
        response: &R,
    ) -> ApiResult<()> {
        record(&txn, self.scope, &self.key, &self.hash, response).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// Opens the transaction of an idempotent mutation with [`begin`], returning early from the
/// calling handler with the stored response when the request is a repeat:
/// `let (txn, guard) = begin_idempotent!(&self.db, "warehouse.ConfirmPick", req);`
#[macro_export]
macro_rules! begin_idempotent {
    ($db:expr, $scope:expr, $req:expr) => {
        match $crate::idempotency::begin($db, $scope, &$req.idempotency_key, &$req).await? {
            $crate::idempotency::Begun::Replay(previous) => return Ok(previous),
            $crate::idempotency::Begun::New(txn, guard) => (txn, guard),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensation_keys_map_to_their_forward_key() {
        assert_eq!(
            forward_key_of("s1:reserve_stock:compensate").as_deref(),
            Some("s1:reserve_stock:forward")
        );
        assert_eq!(forward_key_of("manual-release-7"), None);
    }
}
