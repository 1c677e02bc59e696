//! Every gRPC call observed once, when it ends: counted and timed in the
//! metrics (`oma_grpc_requests_total` by method and status code,
//! `oma_grpc_request_duration_seconds` by method) and written as one line
//! of the request log (tracing target `oma::request`: method, code, time,
//! peer, who; health checks at debug so a load balancer's probes do not
//! fill it).
//!
//! A call ends with its `grpc-status`: in the response headers when it
//! failed at once, else in the trailers after the last message, so the
//! response body is wrapped to see them. A body dropped before its
//! trailers (the client went away) ends as CANCELLED.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use prost::Message as _;
use tonic::{Code, Status};

use super::limits::peer_ip;
use crate::service::Principal;

/// Who made a call, left in the response's extensions by the auth layer
/// for the request log.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl Actor {
    pub fn of(principal: &Principal) -> Actor {
        Actor(match principal {
            Principal::User(caller) => format!("{}/{}", caller.tenant_id, caller.user_id),
            Principal::Machine(machine) => format!("{}/{}", machine.tenant_id, machine.runtime_id),
        })
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    /// The paths this server answers; any other is labelled `other`, so a
    /// client cannot grow the metrics with made-up method names.
    methods: Arc<HashSet<String>>,
}

impl ObserveLayer {
    pub fn new() -> ObserveLayer {
        ObserveLayer {
            methods: Arc::new(known_methods()),
        }
    }
}

impl Default for ObserveLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// `/package.Service/Method` of every method in the embedded descriptor
/// sets (ours and health), and the two reflection services.
fn known_methods() -> HashSet<String> {
    let mut methods = HashSet::new();
    for encoded in [oma_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
        let set = prost_types::FileDescriptorSet::decode(encoded).expect("the embedded descriptor sets are valid");
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.insert(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
    }
    for version in ["v1", "v1alpha"] {
        methods.insert(format!(
            "/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
        ));
    }
    methods
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    methods: Arc<HashSet<String>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let method = if self.methods.contains(path) {
            path.trim_start_matches('/').to_owned()
        } else {
            "other".to_owned()
        };
        let mut call = Call {
            method,
            peer: peer_ip(&request).map(|ip| ip.to_string()).unwrap_or_default(),
            actor: String::new(),
            started: Instant::now(),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = match future.await {
                Ok(response) => response,
                Err(e) => {
                    call.finish(Code::Unknown);
                    return Err(e);
                }
            };
            if let Some(actor) = response.extensions().get::<Actor>() {
                call.actor = actor.0.clone();
            }
            // Failed at once ("trailers-only"): the status is in the headers.
            if let Some(code) = response.headers().get("grpc-status") {
                call.finish(Code::from_bytes(code.as_bytes()));
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(ObservedBody { body, call: Some(call) })))
        })
    }
}

/// One call, until it is finished.
struct Call {
    method: String,
    peer: String,
    actor: String,
    started: Instant,
}

impl Call {
    fn finish(self, code: Code) {
        let elapsed = self.started.elapsed();
        let code = code_name(code);
        metrics::counter!("oma_grpc_requests_total", "method" => self.method.clone(), "code" => code).increment(1);
        metrics::histogram!("oma_grpc_request_duration_seconds", "method" => self.method.clone())
            .record(elapsed.as_secs_f64());
        let ms = elapsed.as_secs_f64() * 1000.0;
        if self.method.starts_with("grpc.health.") {
            tracing::debug!(target: "oma::request", method = %self.method, code, ms, peer = %self.peer, "call");
        } else {
            tracing::info!(
                target: "oma::request",
                method = %self.method,
                code,
                ms,
                peer = %self.peer,
                who = %self.actor,
                "call"
            );
        }
    }
}

/// A response body that finishes its call on the trailers (or when it is
/// dropped without them).
struct ObservedBody {
    body: tonic::body::Body,
    call: Option<Call>,
}

impl ObservedBody {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map(|v| Code::from_bytes(v.as_bytes()))
                        .unwrap_or(Code::Unknown);
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.finish(code);
            }
            Poll::Ready(None) => self.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The code's name as the gRPC spec spells it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_contract_is_known_and_nothing_else() {
        let methods = known_methods();
        assert!(methods.contains("/oma.v1.SessionService/CreateSession"));
        assert!(methods.contains("/oma.v1.RuntimeStreamService/OpenStream"));
        assert!(methods.contains("/grpc.health.v1.Health/Check"));
        assert!(methods.contains("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
        assert!(!methods.contains("/oma.v1.SessionService/MadeUp"));
        assert!(!methods.contains("oma.v1.SessionService/CreateSession"));
    }
}
