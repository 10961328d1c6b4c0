//! [`Stage`]: the states of every adapter's response future, and their transitions, written
//! once. An adapter's future wraps a `Stage` and only turns what it yields into its
//! framework's response.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use super::plan::{After, Check, Verdict};

pin_project! {
    /// Where an adapter's response future is. `F` is the inner service's future, `A` the
    /// adapter's ready answer (429, 503, 400), `C` what calling the inner service after a
    /// check takes (the service and the request).
    pub struct Stage<F, A, C> {
        #[pin]
        state: State<F, A, C>,
    }
}

pin_project! {
    // Each state holds exactly what it needs. The common one, `Inner`, stays small: the rare
    // ones are boxed, so that every request does not move a future as large as a request.
    #[project = StateProj]
    #[project_replace = StateOwned]
    enum State<F, A, C> {
        // The inner service's future (allowed, or not limited), and what its response gets
        // (the IETF fields to add; in-flight slots, held until it is ready).
        Inner {
            #[pin]
            future: F,
            after: Option<Box<After>>,
        },
        // The answer, ready.
        Answer {
            answer: Box<A>,
        },
        // The token source being asked, and what calling the inner service takes.
        Checking {
            checking: Box<(Check, C)>,
        },
        // Between two states, and after the answer was handed out.
        Done,
    }
}

impl<F, A, C> Stage<F, A, C> {
    /// Calls the inner service: `future`, then what its response gets (`after`: the IETF
    /// fields to add; in-flight slots held until it is ready, or until the stage is dropped).
    #[inline]
    pub fn inner(future: F, after: Option<Box<After>>) -> Self {
        Stage {
            state: State::Inner { future, after },
        }
    }

    /// Answers `answer`.
    pub fn answer(answer: Box<A>) -> Self {
        Stage {
            state: State::Answer { answer },
        }
    }

    /// Waits for `check`, then goes on with `call` as the poller's `resume` says.
    pub fn checking(check: Check, call: C) -> Self {
        Stage {
            state: State::Checking {
                checking: Box::new((check, call)),
            },
        }
    }
}

impl<F: Future, A, C> Stage<F, A, C> {
    /// Polls the stage. After a check, `resume` turns its verdict and what calling the inner
    /// service takes into the next stage (the inner service, or an answer). Then `respond`
    /// turns the inner service's output and what its response gets (its [`After`], which the
    /// adapter [finishes](After::finish) with the response's status and
    /// [`Used`](super::Used): the IETF fields to add) into the adapter's output, or `answer`
    /// the answer (`None` when polled after completion). Each is called where its value is
    /// returned, so that a response is not moved again.
    #[inline]
    pub fn poll_stage<O>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        resume: impl FnOnce(C, Verdict) -> Self,
        respond: impl FnOnce(F::Output, Option<Box<After>>) -> O,
        answer: impl FnOnce(Option<A>) -> O,
    ) -> Poll<O> {
        let mut state = self.project().state;
        match state.as_mut().project() {
            // The hot path, kept small: the rare states are polled out of line.
            StateProj::Inner { future, after } => {
                if after.is_none() {
                    // Nothing to add: the inner service's output goes straight through.
                    return future.poll(cx).map(|output| respond(output, None));
                }
                let output = ready!(future.poll(cx));
                Poll::Ready(respond(output, after.take()))
            }
            _ => poll_rare(state, cx, resume, respond, answer),
        }
    }
}

/// Polls a stage that is not `Inner`: waits for the check and resumes (polling what
/// follows), or hands out the answer (`None` when done already).
#[cold]
#[inline(never)]
fn poll_rare<F: Future, A, C, O>(
    mut state: Pin<&mut State<F, A, C>>,
    cx: &mut Context<'_>,
    resume: impl FnOnce(C, Verdict) -> Stage<F, A, C>,
    respond: impl FnOnce(F::Output, Option<Box<After>>) -> O,
    answer: impl FnOnce(Option<A>) -> O,
) -> Poll<O> {
    if let StateProj::Checking { checking } = state.as_mut().project() {
        let verdict = ready!(checking.0.as_mut().poll(cx));
        let StateOwned::Checking { checking } = state.as_mut().project_replace(State::Done) else {
            unreachable!("the state was Checking")
        };
        let (_, call) = *checking;
        state.set(resume(call, verdict).state);
    }
    match state.as_mut().project() {
        StateProj::Inner { future, after } => {
            let output = ready!(future.poll(cx));
            Poll::Ready(respond(output, after.take()))
        }
        StateProj::Answer { .. } | StateProj::Done => {
            Poll::Ready(answer(match state.project_replace(State::Done) {
                StateOwned::Answer { answer } => Some(*answer),
                _ => None,
            }))
        }
        StateProj::Checking { .. } => {
            unreachable!("a check resumes with the inner service or an answer")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{ready, Ready};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    type Test = Stage<Ready<u8>, &'static str, u8>;

    struct Noop;

    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    /// What a test stage yields: the inner output, or the answer (`None` when done).
    #[derive(Debug, PartialEq)]
    enum Yield {
        Inner(u8),
        Answer(Option<&'static str>),
    }

    fn poll(stage: &mut Pin<Box<Test>>) -> Poll<Yield> {
        let waker = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        stage.as_mut().poll_stage(
            &mut cx,
            |call, verdict| match verdict {
                Verdict::Allowed(_) => Stage::inner(ready(call), None),
                Verdict::Refused(_) => Stage::answer(Box::new("refused")),
            },
            |output, _| Yield::Inner(output),
            Yield::Answer,
        )
    }

    #[test]
    fn each_stage_yields_once_then_done() {
        let mut inner: Pin<Box<Test>> = Box::pin(Stage::inner(ready(7), None));
        assert_eq!(poll(&mut inner), Poll::Ready(Yield::Inner(7)));
        let mut answer: Pin<Box<Test>> = Box::pin(Stage::answer(Box::new("429")));
        assert_eq!(poll(&mut answer), Poll::Ready(Yield::Answer(Some("429"))));
        assert_eq!(poll(&mut answer), Poll::Ready(Yield::Answer(None)));
    }

    #[test]
    fn a_check_resumes_with_its_verdict() {
        let refused: Check = Box::pin(async { Verdict::Refused(Box::default()) });
        let mut stage: Pin<Box<Test>> = Box::pin(Stage::checking(refused, 3));
        assert_eq!(
            poll(&mut stage),
            Poll::Ready(Yield::Answer(Some("refused")))
        );
        assert_eq!(poll(&mut stage), Poll::Ready(Yield::Answer(None)));
    }
}
