//! Times the phases of a real call in situ: the library marks each phase of a learn or forget
//! with a trace span (`store`, `commit`, `stats`, `solve`, `publish`; it carries the
//! subscriber over to the thread that runs `stats` and `solve` beside `commit`), and
//! [`SpanTimes`] records how long each was entered while it is the calling thread's subscriber.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::span::Id;
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// The spans closed so far, by name, in the order they closed.
#[derive(Clone, Default)]
pub struct SpanTimes(Arc<Mutex<Vec<(&'static str, f64)>>>);

/// When the span was entered.
struct Entered(Instant);

impl SpanTimes {
    /// Runs `f` with this recorder as the thread's subscriber; returns its result and the spans
    /// it entered, with their seconds.
    pub fn record<T>(f: impl FnOnce() -> T) -> (T, Vec<(&'static str, f64)>) {
        let times = SpanTimes::default();
        let subscriber = tracing_subscriber::registry().with(times.clone());
        let out = tracing::subscriber::with_default(subscriber, f);
        let spans = std::mem::take(&mut *times.0.lock().unwrap_or_else(|e| e.into_inner()));
        (out, spans)
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanTimes {
    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Entered(Instant::now()));
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(Entered(at)) = span.extensions_mut().remove::<Entered>() {
                let seconds = at.elapsed().as_secs_f64();
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((span.name(), seconds));
            }
        }
    }
}
