//! The layer on a real tonic server, called by a real tonic client over a socket: the
//! standard health service (no code generation), limited per user from the `x-user-id`
//! metadata. Refusals are gRPC statuses: 8 (`RESOURCE_EXHAUSTED`, with `retry-after` and
//! `grpc-retry-pushback-ms`), 3 (`INVALID_ARGUMENT`), 14 (`UNAVAILABLE`).
#![allow(clippy::unwrap_used, missing_docs)]

use http::HeaderName;
use lightrate::tower::{Identify, LightRateLayer};
use lightrate::{Error, ErrorKind, OnUnavailable};
use lightrate_testing::Recording;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;

const CHECK: &str = "/grpc.health.v1.Health/Check";

/// Serves the health service behind `layer` on 127.0.0.1:0; returns a connected client.
async fn serve(layer: LightRateLayer) -> HealthClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let stack = ServiceBuilder::new()
        .layer(layer)
        // The layer answers with bodies made from bytes: tonic's body is not, axum's is.
        .map_response(|r: http::Response<tonic::body::Body>| r.map(axum::body::Body::new));
    tokio::spawn(
        Server::builder()
            .layer(stack)
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

fn user_layer(limiter: lightrate::Limiter) -> LightRateLayer {
    LightRateLayer::new(limiter).identify(Identify::header(HeaderName::from_static("x-user-id")))
}

async fn check(client: &mut HealthClient<Channel>, user: &str) -> Result<ServingStatus, Status> {
    let mut request = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-user-id", user.parse().unwrap());
    let answer = client.check(request).await?.into_inner();
    Ok(answer.status())
}

#[tokio::test]
async fn a_method_over_its_burst_is_resource_exhausted_with_the_retry_delay() {
    let source = Recording::demo();
    let mut client = serve(user_layer(source.limiter(OnUnavailable::Allow))).await;
    // The method path is the route: `POST /grpc.health.v1.Health/Check`, under the demo
    // rules' default rule (burst 5).
    for _ in 0..5 {
        assert_eq!(
            check(&mut client, "ann").await.unwrap(),
            ServingStatus::Serving
        );
    }
    let refused = check(&mut client, "ann").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.message(),
        "rate limited by rule rule_default; retry after 1 s"
    );
    let metadata = refused.metadata();
    assert_eq!(metadata.get("retry-after").unwrap(), "1");
    // The true wait, in milliseconds: the next token, one second away (less the denial
    // cache's safety margin).
    let pushback: u64 = metadata
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((990..=1000).contains(&pushback), "{pushback}");
    // Per user: another one is served.
    assert!(check(&mut client, "bob").await.is_ok());
    assert!(source
        .calls()
        .iter()
        .all(|(target, _)| target == &format!("POST {CHECK}")));
}

#[tokio::test]
async fn an_unusable_identifier_is_invalid_argument() {
    let source = Recording::demo();
    let mut client = serve(user_layer(source.limiter(OnUnavailable::Allow))).await;
    let refused = check(&mut client, &"x".repeat(300)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        refused.message(),
        "the user identifier is longer than 256 bytes"
    );
    assert!(refused.metadata().get("retry-after").is_none());
    assert!(source.calls().is_empty());
}

#[tokio::test]
async fn an_outage_under_deny_is_unavailable() {
    let source = Recording::demo();
    source.fail_with(Some(Error::new(ErrorKind::Timeout, "slow")));
    let mut client = serve(user_layer(source.limiter(OnUnavailable::Deny))).await;
    let refused = check(&mut client, "ann").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("timed out"), "{refused:?}");
    assert_eq!(refused.metadata().get("retry-after").unwrap(), "1");
    // Allow lets it through.
    let mut client = serve(user_layer(source.limiter(OnUnavailable::Allow))).await;
    assert!(check(&mut client, "ann").await.is_ok());
}

#[tokio::test]
async fn an_operation_per_grpc_method() {
    let source = Recording::demo();
    let layer = user_layer(source.limiter(OnUnavailable::Allow));
    // `Check` is the operation `send_email` (burst 10), declared by its method path.
    let layer = {
        let _route = layer.operation(CHECK, "send_email");
        layer
    };
    let mut client = serve(layer).await;
    for _ in 0..10 {
        assert!(check(&mut client, "ann").await.is_ok());
    }
    let refused = check(&mut client, "ann").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("rule_send_email"), "{refused:?}");
    let calls = source.calls();
    assert!(
        calls
            .iter()
            .all(|(t, n)| t == "operation send_email" && *n == 1),
        "{calls:?}"
    );
}
