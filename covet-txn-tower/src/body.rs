//! The two body types the layer puts in place of the ones it is given:
//! [`RequestBody`], what the inner service reads (the client's stream, or a
//! buffered copy that each retry reads anew), and [`ResponseBody`], what the
//! layer answers with (the inner service's body, or a short message of the
//! layer's own).
//!
//! A leaf: bodies know nothing of transactions. Both are enums behind a
//! struct so that their variants stay private and can change.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service reads: the client's own body as
    /// it streams in, or, when the layer retries, a buffered copy of it
    /// (data and trailers), read afresh by each attempt.
    ///
    /// An axum `Router` takes it as it is; a service of your own takes
    /// `Request<RequestBody<B>>` where it took `Request<B>`.
    ///
    /// ```
    /// use covet_txn_tower::RequestBody;
    /// use http_body::Body;
    ///
    /// fn takes_any_body(_: impl Body<Data = bytes::Bytes>) {}
    /// fn forwards(body: RequestBody<String>) { takes_any_body(body) }
    /// ```
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    #[derive(Debug)]
    enum RequestKind<B> {
        Streaming { #[pin] body: B },
        Buffered { data: Option<Bytes>, trailers: Option<HeaderMap> },
    }
}

impl<B> RequestBody<B> {
    /// The client's body, streamed through untouched.
    pub(crate) fn streaming(body: B) -> Self {
        RequestBody {
            kind: RequestKind::Streaming { body },
        }
    }

    /// A buffered body: `data`, then `trailers` if the client sent any.
    pub(crate) fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        RequestBody {
            kind: RequestKind::Buffered {
                // An empty body yields no data frame at all, as hyper's does.
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            RequestKindProj::Streaming { body } => body.poll_frame(cx),
            RequestKindProj::Buffered { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Streaming { body } => body.is_end_stream(),
            RequestKind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Streaming { body } => body.size_hint(),
            RequestKind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
        }
    }
}

pin_project! {
    /// The response body the layer answers with: the inner service's own,
    /// or a short plain-text message when the layer answers by itself (a
    /// panic, a failed COMMIT, a body too large to retry).
    ///
    /// An axum `Router` takes it as it is (it implements
    /// `http_body::Body<Data = Bytes>`).
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    #[derive(Debug)]
    enum ResponseKind<B> {
        Inner { #[pin] body: B },
        Message { text: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// The inner service's body.
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody {
            kind: ResponseKind::Inner { body },
        }
    }

    /// A message of the layer's own.
    pub(crate) fn message(text: &'static str) -> Self {
        ResponseBody {
            kind: ResponseKind::Message {
                text: Some(Bytes::from_static(text.as_bytes())),
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            ResponseKindProj::Inner { body } => body.poll_frame(cx),
            ResponseKindProj::Message { text } => Poll::Ready(text.take().map(Frame::data).map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Inner { body } => body.is_end_stream(),
            ResponseKind::Message { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Inner { body } => body.size_hint(),
            ResponseKind::Message { text } => {
                SizeHint::with_exact(text.as_ref().map_or(0, |text| text.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn frames<B: Body<Data = Bytes> + Unpin>(mut body: B) -> Vec<Frame<Bytes>>
    where
        B::Error: std::fmt::Debug,
    {
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
            frames.push(frame.expect("a buffered body does not fail"));
        }
        assert!(body.is_end_stream());
        frames
    }

    #[test]
    fn a_buffered_body_yields_its_data_then_its_trailers_and_ends() {
        let mut trailers = HeaderMap::new();
        trailers.insert("checksum", http::HeaderValue::from_static("abc"));
        let body = RequestBody::<String>::buffered(Bytes::from_static(b"hello"), Some(trailers));
        assert_eq!(body.size_hint().exact(), Some(5));
        let frames = frames(body);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].data_ref(), Some(&Bytes::from_static(b"hello")));
        assert_eq!(
            frames[1].trailers_ref().and_then(|t| t.get("checksum")),
            Some(&http::HeaderValue::from_static("abc"))
        );
    }

    #[test]
    fn an_empty_buffered_body_is_over_before_it_starts() {
        let body = RequestBody::<String>::buffered(Bytes::new(), None);
        assert!(body.is_end_stream());
        assert!(frames(body).is_empty());
    }

    #[test]
    fn a_message_is_one_frame_of_known_length() {
        let body = ResponseBody::<String>::message("internal server error\n");
        assert_eq!(body.size_hint().exact(), Some(22));
        assert_eq!(frames(body).len(), 1);
    }
}
