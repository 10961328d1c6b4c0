//! What a decided request gets: the verdict of a check, the IETF fields of an allowed
//! response, the refusals (429, 503, 400, or their gRPC forms, or the user's own answers), and
//! shadow mode's let-through.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response};

use super::plan::{Allowed, Plan, Verdict};
use super::policy::RequestPolicy;
use super::rejection::{write_rate_limit_headers, RateLimitHeaders, Rejection};
use super::shadow::Mode;
use super::view::RequestView;
use crate::{Decision, Error};

impl<V: RequestView> RequestPolicy<V> {
    /// A request refused before the limiter (400): counted, and answered, or let through
    /// (`Ok`, undecided) in shadow mode.
    #[cold]
    pub(super) fn refuse_unidentified(
        &self,
        rejection: Rejection,
        req: &V::Request,
    ) -> Result<(), Plan> {
        self.limiter.count_invalid();
        if self.options.mode == Mode::Shadow {
            self.let_through(&rejection);
            return Ok(());
        }
        Err(Plan::Refused(self.respond(&rejection, V::is_grpc(req))))
    }

    /// Logs (at a limited rate) a request shadow mode let through instead of `rejection`.
    #[cold]
    pub(super) fn let_through(&self, rejection: &Rejection) {
        let rule = match rejection {
            Rejection::RateLimited { policy, .. } => policy.as_deref(),
            _ => None,
        };
        let now_ms = self.limiter.now().as_millis();
        self.shadow_log
            .let_through(now_ms, rejection.status().as_u16(), rule);
    }

    /// What the source's answer means for the request.
    pub(super) fn settle(&self, checked: Result<Decision, Error>, grpc: bool) -> Verdict {
        match checked {
            Ok(decision) => self.verdict(decision, grpc),
            // Shadow mode: through, with the decision the outage policy would have enforced.
            Err(error) if self.options.mode == Mode::Shadow => {
                let retry_after = error.retry_after().unwrap_or(std::time::Duration::ZERO);
                self.verdict(
                    Decision::unavailable(false, error.kind(), retry_after),
                    grpc,
                )
            }
            // The policy is to surface the source's failure: answer 503.
            Err(error) => Verdict::Refused(self.respond(&Rejection::from_error(&error), grpc)),
        }
    }

    /// What a decision the token source made means for the request (a gRPC one when
    /// `grpc`).
    pub(super) fn verdict(&self, decision: Decision, grpc: bool) -> Verdict {
        match self.admit(&decision) {
            Some(headers) => Verdict::Allowed(Allowed {
                decision: Some(decision),
                keep: self.options.insert_decision,
                headers,
                family: self.family.clone(),
                decisions: None,
                charges: Vec::new(),
                slots: Vec::new(),
                settle: None,
            }),
            None => Verdict::Refused(self.refuse(&decision, grpc)),
        }
    }

    /// Whether `decision` lets its request through (`None`: refuse it; in shadow mode every
    /// decision does, a denial being logged), with the IETF fields its response gets.
    #[inline(always)]
    pub(super) fn admit(&self, decision: &Decision) -> Option<Option<Box<HeaderMap>>> {
        if !decision.is_allowed() {
            if self.options.mode != Mode::Shadow {
                return None;
            }
            self.let_through(&Rejection::from_decision(*decision, self.rule_id(decision)));
        }
        Some(
            if self.options.headers == RateLimitHeaders::Always && decision.rule().is_some() {
                self.allowed_fields(decision)
            } else {
                None
            },
        )
    }

    /// The id of the rule `decision` was charged to.
    pub(super) fn rule_id(&self, decision: &Decision) -> Option<Arc<str>> {
        decision.rule().and_then(|rule| self.limiter.rule_id(&rule))
    }

    /// The IETF fields of an allowed response.
    #[inline(never)]
    pub(super) fn allowed_fields(&self, decision: &Decision) -> Option<Box<HeaderMap>> {
        let mut fields = HeaderMap::new();
        let policy = self.rule_id(decision);
        write_rate_limit_headers(
            &mut fields,
            decision,
            policy.as_deref().unwrap_or("default"),
        );
        Some(Box::new(fields))
    }

    /// The answer to a request `decision` denies.
    #[cold]
    #[inline(never)]
    pub(super) fn refuse(&self, decision: &Decision, grpc: bool) -> Box<Response<Bytes>> {
        tracing::debug!(
            target: "lightrate::web",
            retry_after = decision.retry_after_secs(),
            source = ?decision.source(),
            "request limited"
        );
        let rejection = Rejection::from_decision(*decision, self.rule_id(decision));
        self.respond(&rejection, grpc)
    }

    /// The answer to a rejection: the gRPC one to a gRPC request, else the user's, or the
    /// default.
    #[cold]
    pub(super) fn respond(&self, rejection: &Rejection, grpc: bool) -> Box<Response<Bytes>> {
        Box::new(match &self.options.respond {
            _ if grpc => rejection.to_grpc_response(),
            Some(f) => f(rejection),
            None => rejection.to_response(self.options.headers),
        })
    }
}
