//! The response future shared by layers that can refuse a request early.
//!
//! Following tower-http (`src/limit/future.rs`), a refusal is a *response*
//! returned through the `Early` arm, not an `Err`: the inner service is never
//! called, so nothing is forwarded.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use crate::body::GatewayBody;

pin_project! {
    /// Either the inner service's future or a response decided by the layer.
    #[project = ResponseFutureProj]
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields
    pub enum ResponseFuture<F> {
        /// The request passed; poll the inner service.
        Inner {
            #[pin]
            future: F,
        },
        /// The layer answered by itself.
        Early {
            response: Option<Response<GatewayBody>>,
        },
    }
}

impl<F> ResponseFuture<F> {
    /// Wraps the inner service's future.
    pub fn inner(future: F) -> Self {
        Self::Inner { future }
    }

    /// Answers with `response` without calling the inner service.
    pub fn early(response: Response<GatewayBody>) -> Self {
        Self::Early {
            response: Some(response),
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<GatewayBody>, E>>,
{
    type Output = Result<Response<GatewayBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response))
            }
            ResponseFutureProj::Early { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

/// Takes the inner service that was driven to readiness, leaving a clone in
/// its place, for a future that calls it later. Calling the clone instead
/// would skip its readiness (see tower's note on cloning inner services:
/// <https://docs.rs/tower/latest/tower/trait.Service.html#be-careful-when-cloning-inner-services>).
pub fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// A step that runs before the inner service: it yields the request to
/// forward, or the response to answer with instead.
pub type Prepare = BoxFuture<'static, Result<Request<GatewayBody>, Response<GatewayBody>>>;

pin_project! {
    /// Runs a [`Prepare`] step (reading a body, waiting for an audit write),
    /// then calls the inner service with its request.
    ///
    /// The inner call is polled here rather than awaited in an `async` block:
    /// rustc cannot prove such a block `Send` for this body type.
    pub struct ThenCall<S, F> {
        #[pin]
        state: Step<F>,
        inner: Option<S>,
    }
}

pin_project! {
    #[project = StepProj]
    enum Step<F> {
        Preparing { prepare: Prepare },
        Calling { #[pin] call: F },
    }
}

impl<S, F> ThenCall<S, F> {
    /// Runs `prepare`, then `inner` (already driven to readiness).
    pub fn new(prepare: Prepare, inner: S) -> Self {
        Self {
            state: Step::Preparing { prepare },
            inner: Some(inner),
        }
    }
}

impl<S> Future for ThenCall<S, S::Future>
where
    S: Service<Request<GatewayBody>, Response = Response<GatewayBody>>,
{
    type Output = Result<Response<GatewayBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StepProj::Preparing { prepare } => match ready!(prepare.as_mut().poll(cx)) {
                    Err(answer) => return Poll::Ready(Ok(answer)),
                    Ok(request) => {
                        let mut inner = this.inner.take().expect("polled after completion");
                        let call = inner.call(request);
                        this.state.set(Step::Calling { call });
                    }
                },
                StepProj::Calling { call } => return call.poll(cx),
            }
        }
    }
}
