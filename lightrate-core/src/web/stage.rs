//! [`Stage`]: the states of every adapter's response future, and their transitions, written
//! once. An adapter's future wraps a `Stage` and only turns what it yields into its
//! framework's response.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::HeaderMap;
use pin_project_lite::pin_project;

use super::policy::{Check, Verdict};

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
        // The inner service's future (allowed, or not limited), and the IETF fields to add to
        // its response.
        Inner {
            #[pin]
            future: F,
            headers: Option<Box<HeaderMap>>,
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

/// What a [`Stage`] yields.
#[derive(Debug)]
pub enum Finished<T, A> {
    /// The inner service's output, and the IETF fields to add to its response.
    Inner(T, Option<Box<HeaderMap>>),
    /// The answer.
    Answer(A),
    /// Polled again after it yielded.
    Done,
}

impl<F, A, C> Stage<F, A, C> {
    /// Calls the inner service: `future`, then `headers` on its response.
    #[inline]
    pub fn inner(future: F, headers: Option<Box<HeaderMap>>) -> Self {
        Stage {
            state: State::Inner { future, headers },
        }
    }

    /// Answers `answer`.
    pub fn answer(answer: A) -> Self {
        Stage {
            state: State::Answer {
                answer: Box::new(answer),
            },
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
    /// Polls the stage; after a check, `resume` turns its verdict and `call` into the next
    /// stage (the inner service, or an answer).
    #[inline]
    pub fn poll_stage(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        resume: impl FnOnce(C, Verdict) -> Self,
    ) -> Poll<Finished<F::Output, A>> {
        let mut state = self.project().state;
        let mut resume = Some(resume);
        loop {
            match state.as_mut().project() {
                StateProj::Inner { future, headers } => {
                    let output = ready!(future.poll(cx));
                    return Poll::Ready(Finished::Inner(output, headers.take()));
                }
                StateProj::Checking { checking } => {
                    let verdict = ready!(checking.0.as_mut().poll(cx));
                    let (StateOwned::Checking { checking }, Some(resume)) =
                        (state.as_mut().project_replace(State::Done), resume.take())
                    else {
                        unreachable!("the state was Checking, and checks once")
                    };
                    let (_, call) = *checking;
                    state.set(resume(call, verdict).state);
                }
                StateProj::Answer { .. } => {
                    return Poll::Ready(match state.project_replace(State::Done) {
                        StateOwned::Answer { answer } => Finished::Answer(*answer),
                        _ => unreachable!("the state was Answer"),
                    });
                }
                StateProj::Done => return Poll::Ready(Finished::Done),
            }
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

    fn poll(stage: &mut Pin<Box<Test>>) -> Poll<Finished<u8, &'static str>> {
        let waker = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        stage
            .as_mut()
            .poll_stage(&mut cx, |call, verdict| match verdict {
                Verdict::Allowed(_) => Stage::inner(ready(call), None),
                Verdict::Refused(_) => Stage::answer("refused"),
            })
    }

    #[test]
    fn each_stage_yields_once_then_done() {
        let mut inner: Pin<Box<Test>> = Box::pin(Stage::inner(ready(7), None));
        assert!(matches!(
            poll(&mut inner),
            Poll::Ready(Finished::Inner(7, None))
        ));
        let mut answer: Pin<Box<Test>> = Box::pin(Stage::answer("429"));
        assert!(matches!(
            poll(&mut answer),
            Poll::Ready(Finished::Answer("429"))
        ));
        assert!(matches!(poll(&mut answer), Poll::Ready(Finished::Done)));
    }

    #[test]
    fn a_check_resumes_with_its_verdict() {
        let refused: Check =
            Box::pin(async { Verdict::Refused(http::Response::new(bytes::Bytes::new())) });
        let mut stage: Pin<Box<Test>> = Box::pin(Stage::checking(refused, 3));
        assert!(matches!(
            poll(&mut stage),
            Poll::Ready(Finished::Answer("refused"))
        ));
        assert!(matches!(poll(&mut stage), Poll::Ready(Finished::Done)));
    }
}
