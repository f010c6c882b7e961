//! Reading a request body into memory, up to a limit, so that a retried
//! request can give each attempt the same body.
//!
//! A leaf above `body`: knows nothing of transactions. Only the retrying
//! path reads bodies this way; without retry the body streams through.
//!
//! Written here rather than with `http_body_util::Limited`: the caller must
//! tell "too large" (413) from "the client's body failed" (400), which
//! `Limited` folds into one boxed error, and a body whose declared length is
//! already over the limit is refused before a byte of it is read.

use std::future::poll_fn;
use std::pin::pin;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Body;

use crate::body::RequestBody;

/// A request body read whole: a fresh [`RequestBody`] per attempt, sharing
/// the bytes.
#[derive(Debug, Clone)]
pub(crate) struct Buffered {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Buffered {
    /// A body for one attempt.
    pub(crate) fn body<B>(&self) -> RequestBody<B> {
        RequestBody::buffered(self.data.clone(), self.trailers.clone())
    }
}

/// Why a body could not be buffered.
#[derive(Debug)]
pub(crate) enum BufferError<E> {
    /// It is longer than the limit (declared so, or found so while reading).
    TooLarge,
    /// Reading it failed (the client went away, a malformed chunk).
    Read(E),
}

/// Reads `body` whole, failing as soon as it is known to be longer than
/// `limit` bytes.
pub(crate) async fn read_to_limit<B>(
    body: B,
    limit: usize,
) -> Result<Buffered, BufferError<B::Error>>
where
    B: Body<Data = Bytes>,
{
    let limit = limit as u64;
    if body.size_hint().lower() > limit {
        return Err(BufferError::TooLarge);
    }
    let mut body = pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut read: u64 = 0;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(BufferError::Read)?;
        let frame = match frame.into_data() {
            Ok(data) => {
                read += data.len() as u64;
                if read > limit {
                    return Err(BufferError::TooLarge);
                }
                // Most bodies arrive in one frame: keep it as it is, and
                // copy only when a second one comes.
                if first.is_none() && rest.is_empty() {
                    first = Some(data);
                } else {
                    if let Some(previous) = first.take() {
                        rest.extend_from_slice(&previous);
                    }
                    rest.extend_from_slice(&data);
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(more) = frame.into_trailers() {
            match &mut trailers {
                Some(trailers) => trailers.extend(more),
                None => trailers = Some(more),
            }
        }
    }
    let data = first.unwrap_or_else(|| rest.freeze());
    Ok(Buffered { data, trailers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body::{Frame, SizeHint};

    /// A body of several frames, with no declared length.
    struct Chunks(Vec<Frame<Bytes>>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready((!self.0.is_empty()).then(|| Ok(self.0.remove(0))))
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::default()
        }
    }

    fn chunks(parts: &[&'static str]) -> Chunks {
        Chunks(
            parts
                .iter()
                .map(|part| Frame::data(Bytes::from_static(part.as_bytes())))
                .collect(),
        )
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
        }
    }

    #[test]
    fn frames_are_joined_and_trailers_kept() {
        let mut body = chunks(&["ab", "cd", "e"]);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", http::HeaderValue::from_static("5"));
        body.0.push(Frame::trailers(trailers));
        let buffered = block_on(read_to_limit(body, 5)).expect("fits exactly");
        assert_eq!(buffered.data, Bytes::from_static(b"abcde"));
        assert!(buffered.trailers.is_some_and(|t| t.contains_key("x-sum")));
    }

    #[test]
    fn a_body_found_too_long_while_reading_is_refused() {
        let read = block_on(read_to_limit(chunks(&["abc", "def"]), 5));
        assert!(matches!(read, Err(BufferError::TooLarge)));
    }

    #[test]
    fn a_body_declared_too_long_is_refused_before_reading() {
        let read = block_on(read_to_limit(String::from("too long"), 3));
        assert!(matches!(read, Err(BufferError::TooLarge)));
    }

    #[test]
    fn a_single_frame_is_kept_without_a_copy() {
        let data = Bytes::from_static(b"hello");
        let buffered = block_on(read_to_limit(String::from("hello"), 10)).expect("fits");
        assert_eq!(buffered.data, data);
        assert!(buffered.trailers.is_none());
    }
}
