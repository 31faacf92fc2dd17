//! Helpers for the end-to-end tests: start the whole suite against a backend, connect clients.

#![forbid(unsafe_code)]

use erp_runtime::bus::Bus;
use erp_runtime::config::Settings;
use erp_runtime::testing::Backend;

/// Starts the whole suite on free ports with `settings`.
pub async fn suite(settings: Settings, bus: Bus) -> erp::Suite {
    let _ = erp_runtime::telemetry::init("erp-it", &settings.telemetry);
    erp::start_suite(settings, bus, true)
        .await
        .expect("suite starts")
}

/// Settings for a fresh suite on `backend`, plus extra `ERP__...` overrides. The suite runs
/// as deployed: every call authenticated (a key set of its own under the data directory).
pub fn settings(backend: &Backend, extra: &[(&str, &str)]) -> Settings {
    let mut all = vec![("ERP__AUTH__MODE", "jwt")];
    all.extend_from_slice(extra);
    erp_runtime::testing::settings(backend, &all).0
}

/// A channel to `service` of the suite presenting an admin's token (`audit` is served by
/// every service: the order service's is used).
pub fn channel(s: &erp::Suite, service: &str) -> erp_runtime::auth::PeerChannel {
    erp::testkit::channel_as(
        &s.settings,
        if matches!(service, "audit" | "events") {
            "order"
        } else {
            service
        },
        erp::testkit::TOOL_SUBJECT,
        &[erp_runtime::auth::roles::ADMIN],
    )
}

/// Passes bytes through unchanged, so a test can send anything on the wire, to any method.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

pub use erp::testkit::Clients;

/// Saga timings for tests: quick polls, short leases.
pub const FAST: &[(&str, &str)] = &[
    ("ERP__ORCHESTRATOR__POLL_INTERVAL_MS", "50"),
    ("ERP__ORCHESTRATOR__LEASE_MS", "3000"),
];

/// How long a test waits for a saga to reach a state.
pub const T: std::time::Duration = std::time::Duration::from_secs(20);

/// The whole suite on `backend` with [`FAST`] timings and the seeded catalog, and its clients.
pub async fn seeded(backend: &Backend) -> (erp::Suite, Clients) {
    let s = suite(settings(backend, FAST), Bus::InProcess(Default::default())).await;
    erp::seed::seed(&s).await.expect("seed");
    let c = Clients::for_suite(&s);
    (s, c)
}

/// The packages of the `erp.*` services the suite serves, from the descriptor set its servers
/// reflect. The probe participant (`erp.probe`) is left out: it is the far end of the
/// synthetic saga, run beside the suite (by `erp bench`, or a canary's own deployment).
pub fn suite_files() -> Vec<prost_types::FileDescriptorProto> {
    let fds =
        <prost_types::FileDescriptorSet as prost::Message>::decode(erp_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set the build wrote");
    fds.file
        .into_iter()
        .filter(|f| f.package().starts_with("erp.") && !f.package().starts_with("erp.probe."))
        .collect()
}
