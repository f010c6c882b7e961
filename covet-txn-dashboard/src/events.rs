//! The live updates, over server-sent events and over WebSocket: one task
//! builds each update once per tick, for each alert level some stream asks
//! for, and every stream of either kind sends the same bytes (a
//! reference-counted buffer, not a copy per client). It also caps how many
//! streams of both kinds are open together, and ends them all on shutdown.
//!
//! A stream holds only the latest update: a client that reads slowly skips
//! updates instead of queueing them, and one that stopped reading holds at
//! most what the server's write buffer takes (one message, on a WebSocket),
//! until the connection's idle timeout drops it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use covet_txn::monitor::{AlertLevel, Monitor};
use futures_util::Stream;
use tokio::sync::watch;

use crate::flag::raised;
use crate::settings::Settings;
use crate::update::{self, Level};

/// The filters a stream can ask for; `?level=INFO` is the same as none.
const LEVELS: [Level; 4] = [
    None,
    Some(AlertLevel::Warning),
    Some(AlertLevel::Error),
    Some(AlertLevel::Critical),
];

fn slot(level: Level) -> usize {
    LEVELS.iter().position(|known| *known == level).unwrap_or(0)
}

/// One update, ready to send: the bytes of a server-sent event, and the
/// text of a WebSocket message (the update's JSON, or `{"failure": ...}`).
#[derive(Clone)]
struct Frames {
    event: Bytes,
    message: Utf8Bytes,
}

/// The latest update; `None` until the first tick.
type Frame = Option<Frames>;

/// The streams of one dashboard (and its clones).
pub(crate) struct Hub {
    open: AtomicUsize,
    closing: watch::Sender<bool>,
    /// The running broadcaster's channels, one per level; `None` while no
    /// stream is open.
    channels: Mutex<Option<[watch::Sender<Frame>; 4]>>,
}

/// Why a stream was not opened.
pub(crate) enum Refused {
    /// As many streams as allowed are open.
    Full,
    /// The dashboard is shutting down.
    Closing,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Hub {
            open: AtomicUsize::new(0),
            closing: watch::Sender::new(false),
            channels: Mutex::new(None),
        }
    }

    /// Ends every stream and refuses new ones.
    pub(crate) fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// An open stream of updates at one level: counted against the cap until
/// dropped.
pub(crate) struct Subscription {
    updates: watch::Receiver<Frame>,
    closing: watch::Receiver<bool>,
    heartbeat: Duration,
    guard: OpenStream,
}

/// Opens a stream of updates at `level` and above, for either transport.
pub(crate) fn subscribe(
    hub: &Arc<Hub>,
    monitor: &Monitor,
    settings: &Settings,
    level: Level,
) -> Result<Subscription, Refused> {
    if *hub.closing.borrow() {
        return Err(Refused::Closing);
    }
    // Count first, check after: two requests racing for the last place
    // cannot both get it.
    if hub.open.fetch_add(1, Ordering::AcqRel) >= settings.max_event_streams {
        hub.open.fetch_sub(1, Ordering::AcqRel);
        return Err(Refused::Full);
    }
    let guard = OpenStream(Arc::clone(hub));
    let updates = {
        let mut channels = hub
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let channels = channels.get_or_insert_with(|| {
            let channels = std::array::from_fn(|_| watch::Sender::new(None));
            tokio::spawn(broadcast(
                Arc::clone(hub),
                monitor.clone(),
                settings.clone(),
            ));
            channels
        });
        channels[slot(level)].subscribe()
    };
    Ok(Subscription {
        updates,
        closing: hub.closing.subscribe(),
        heartbeat: (settings.idle_timeout / 2).min(Duration::from_secs(15)),
        guard,
    })
}

/// The subscription as a server-sent event stream, a response body.
pub(crate) fn event_stream(subscription: Subscription) -> Body {
    let Subscription {
        updates,
        closing,
        heartbeat,
        guard,
    } = subscription;
    Body::from_stream(stream(updates, closing, heartbeat, guard))
}

/// Sends the subscription's updates over `socket` until the client leaves,
/// the dashboard closes its streams, or `closed` (the connection's idle
/// timeout, an eviction, the server's shutdown) fires. When no update came
/// for the heartbeat's time, a ping keeps the connection busy.
pub(crate) async fn serve_socket(
    mut socket: WebSocket,
    subscription: Subscription,
    closed: impl std::future::Future<Output = ()> + Send,
) {
    let Subscription {
        mut updates,
        mut closing,
        heartbeat,
        guard: _counted,
    } = subscription;
    tokio::pin!(closed);
    // The latest update goes out at once, so a new page is not blank for a
    // tick.
    updates.mark_changed();
    loop {
        let message = tokio::select! {
            biased;
            () = raised(&mut closing) => {
                let goodbye = Message::Close(Some(CloseFrame {
                    code: 1001,
                    reason: Utf8Bytes::from_static("the dashboard is shutting down"),
                }));
                let _ = tokio::time::timeout(Duration::from_millis(100), socket.send(goodbye)).await;
                return;
            }
            () = &mut closed => return,
            changed = updates.changed() => {
                if changed.is_err() {
                    return;
                }
                let frame = updates.borrow_and_update().clone();
                match frame {
                    Some(frames) => Message::Text(frames.message),
                    None => continue,
                }
            }
            incoming = socket.recv() => match incoming {
                // The page sends nothing but pongs and its close.
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
            () = tokio::time::sleep(heartbeat) => Message::Ping(Bytes::new()),
        };
        // A client that stopped reading leaves this send waiting: the
        // connection's idle timeout, or shutdown, ends it.
        tokio::select! {
            biased;
            () = raised(&mut closing) => return,
            () = &mut closed => return,
            sent = socket.send(message) => if sent.is_err() {
                return;
            },
        }
    }
}

/// Counts a stream as open until it is dropped.
struct OpenStream(Arc<Hub>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

const HEARTBEAT: &[u8] = b": keep-alive\n\n";

fn stream(
    mut updates: watch::Receiver<Frame>,
    closing: watch::Receiver<bool>,
    heartbeat: Duration,
    guard: OpenStream,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    // The latest update goes out at once, so a new page is not blank for a
    // tick.
    updates.mark_changed();
    futures_util::stream::unfold(
        (updates, closing, guard),
        move |(mut updates, mut closing, guard)| async move {
            let bytes = tokio::select! {
                biased;
                () = raised(&mut closing) => return None,
                changed = updates.changed() => {
                    // An error means the broadcaster is gone: so is the
                    // dashboard.
                    changed.ok()?;
                    let frame = updates.borrow_and_update().clone();
                    frame.map_or_else(|| Bytes::from_static(HEARTBEAT), |frames| frames.event)
                }
                () = tokio::time::sleep(heartbeat) => Bytes::from_static(HEARTBEAT),
            };
            Some((Ok(bytes), (updates, closing, guard)))
        },
    )
}

/// Builds the updates, once per tick for each level a stream asks for,
/// until no stream is left or the dashboard closes.
async fn broadcast(hub: Arc<Hub>, monitor: Monitor, settings: Settings) {
    let mut ticks = tokio::time::interval(settings.refresh);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut closing = hub.closing.subscribe();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = raised(&mut closing) => break,
        }
        let wanted: Vec<(usize, watch::Sender<Frame>)> = {
            let mut channels = hub
                .channels
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let Some(senders) = channels.as_ref() else {
                return;
            };
            if senders.iter().all(|sender| sender.receiver_count() == 0) {
                // Decided under the lock that `subscribe` takes: a stream
                // opening now starts a new broadcaster.
                *channels = None;
                return;
            }
            senders
                .iter()
                .enumerate()
                .filter(|(_, sender)| sender.receiver_count() > 0)
                .map(|(index, sender)| (index, sender.clone()))
                .collect()
        };
        for (index, sender) in wanted {
            let frames = match update::json(&monitor, settings.refresh, LEVELS[index]) {
                Ok(json) => Frames {
                    event: event("state", &json),
                    // serde_json writes UTF-8: the conversion cannot fail,
                    // and copies nothing.
                    message: Utf8Bytes::try_from(Bytes::from(json)).unwrap_or_default(),
                },
                Err(error) => {
                    let text = error.to_string();
                    let message = serde_json::json!({ "failure": text }).to_string();
                    Frames {
                        event: event("failure", text.as_bytes()),
                        message: Utf8Bytes::from(message),
                    }
                }
            };
            sender.send_replace(Some(frames));
        }
    }
    let mut channels = hub
        .channels
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *channels = None;
}

/// One server-sent event. `data` must hold no line break: JSON from serde
/// escapes them, and error texts have them replaced.
fn event(name: &str, data: &[u8]) -> Bytes {
    let mut bytes = Vec::with_capacity(data.len() + name.len() + 16);
    bytes.extend_from_slice(b"event: ");
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend_from_slice(b"\ndata: ");
    bytes.extend(data.iter().map(|byte| {
        if matches!(byte, b'\n' | b'\r') {
            b' '
        } else {
            *byte
        }
    }));
    bytes.extend_from_slice(b"\n\n");
    Bytes::from(bytes)
}
