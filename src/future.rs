//! The response future shared by layers that can refuse a request early.
//!
//! Following tower-http (`src/limit/future.rs`), a refusal is a *response*
//! returned through the `Early` arm, not an `Err`: the inner service is never
//! called, so nothing is forwarded.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

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
