//! Retrying a provider call with bounded, jittered exponential backoff. Only a call that
//! has not yet produced any text is retried: re-running one that has would repeat its words.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rand::Rng;

use super::{Chunk, CompletionRequest, Provider, ProviderError, TextStream};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles for each one after.
    pub base_delay: Duration,
    /// No wait is longer, whatever the backoff or the server's `Retry-After` say.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based). The server's `Retry-After`
    /// wins when given; otherwise a random wait in the upper half of `base * 2^(attempt-1)`,
    /// so that agents failing together do not all come back at the same instant.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(self.max_delay);
        }
        let ceiling = self.backoff_ceiling(attempt);
        let floor = ceiling / 2;
        if ceiling <= floor {
            return ceiling;
        }
        rand::rng().random_range(floor..=ceiling)
    }

    fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }
}

/// A provider whose calls are retried under a [`RetryPolicy`]:
///
/// ```ignore
/// let provider: SharedProvider = Arc::new(Retrying::new(OpenAiProvider::new(endpoint), policy));
/// ```
///
/// `stream()` waits for the first delta (or the end) before returning, so that an error
/// arriving as the first event of the stream is retried like one from the request itself.
#[derive(Debug, Clone)]
pub struct Retrying<P> {
    inner: P,
    policy: RetryPolicy,
}

impl<P> Retrying<P> {
    pub fn new(inner: P, policy: RetryPolicy) -> Self {
        Retrying { inner, policy }
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

#[async_trait]
impl<P: Provider> Provider for Retrying<P> {
    async fn stream(&self, request: &CompletionRequest) -> Result<TextStream, ProviderError> {
        let max_attempts = self.policy.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let error = match self.inner.stream(request).await {
                Ok(mut stream) => match until_text(&mut stream).await {
                    Ok(read) => {
                        return Ok(futures::stream::iter(read.into_iter().map(Ok))
                            .chain(stream)
                            .boxed());
                    }
                    Err(error) => error,
                },
                Err(error) => error,
            };
            if !error.transient {
                return Err(error);
            }
            if attempt >= max_attempts {
                let message = if attempt == 1 {
                    error.message
                } else {
                    format!("{}; gave up after {attempt} attempts", error.message)
                };
                return Err(ProviderError { message, ..error });
            }
            let delay = self.policy.delay(attempt, error.retry_after);
            tracing::warn!(
                agent_role = %request.agent_role,
                attempt,
                max_attempts,
                delay_ms = delay.as_millis() as u64,
                error = %error.message,
                "provider call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn model(&self, requested: Option<&str>) -> String {
        self.inner.model(requested)
    }
}

/// The chunks up to and including the first text (or the end): a usage report may come
/// before any text (Anthropic's message start), and a call is retried until text came.
async fn until_text(stream: &mut TextStream) -> Result<Vec<Chunk>, ProviderError> {
    let mut read = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let text = matches!(chunk, Chunk::Text(_));
        read.push(chunk);
        if text {
            break;
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    /// Plays a script of outcomes, one per call, and notes when each call came.
    struct Scripted {
        script: Mutex<VecDeque<Outcome>>,
        calls: Mutex<Vec<Instant>>,
    }

    enum Outcome {
        Fail(ProviderError),
        /// The call succeeds, then the stream yields these items.
        Stream(Vec<Result<Chunk, ProviderError>>),
    }

    impl Scripted {
        fn new(script: Vec<Outcome>) -> Self {
            Scripted {
                script: Mutex::new(script.into()),
                calls: Mutex::new(Vec::new()),
            }
        }

        fn calls(&self) -> Vec<Instant> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Provider for Scripted {
        async fn stream(&self, _: &CompletionRequest) -> Result<TextStream, ProviderError> {
            self.calls.lock().unwrap().push(Instant::now());
            match self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted outcome")
            {
                Outcome::Fail(error) => Err(error),
                Outcome::Stream(items) => Ok(futures::stream::iter(items).boxed()),
            }
        }

        fn model(&self, _: Option<&str>) -> String {
            "scripted".into()
        }
    }

    fn text(text: &str) -> Result<Chunk, ProviderError> {
        Ok(Chunk::Text(text.into()))
    }

    fn request() -> CompletionRequest {
        CompletionRequest {
            agent_role: "qa".into(),
            attempt: 1,
            system: String::new(),
            prompt: "p".into(),
            model: None,
            options: Default::default(),
        }
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        }
    }

    async fn collect(stream: TextStream) -> Vec<Result<Chunk, ProviderError>> {
        stream.collect().await
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_after_a_usage_report_but_before_text_is_retried() {
        let usage = Ok(Chunk::Usage(crate::providers::TokenCounts::reported(
            Some(5),
            None,
        )));
        let provider = Retrying::new(
            Scripted::new(vec![
                Outcome::Stream(vec![
                    usage.clone(),
                    Err(ProviderError::transient("overloaded")),
                ]),
                Outcome::Stream(vec![usage.clone(), text("fine")]),
            ]),
            policy(4),
        );
        let items = collect(provider.stream(&request()).await.unwrap()).await;
        assert_eq!(items, vec![usage, text("fine")]);
        assert_eq!(provider.inner().calls().len(), 2);
    }

    #[test]
    fn delays_double_stay_in_the_upper_half_and_are_capped() {
        let p = policy(10);
        for _ in 0..200 {
            let d1 = p.delay(1, None);
            assert!((50..=100).contains(&d1.as_millis()), "{d1:?}");
            let d2 = p.delay(2, None);
            assert!((100..=200).contains(&d2.as_millis()), "{d2:?}");
            let d3 = p.delay(3, None);
            assert!((175..=350).contains(&d3.as_millis()), "{d3:?}");
            assert!(p.delay(40, None) <= Duration::from_millis(350));
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = policy(4);
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(30))),
            Duration::from_millis(350)
        );
    }

    #[test]
    fn defaults_are_four_attempts_from_half_a_second_to_eight() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 4);
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(500));
        assert_eq!(p.backoff_ceiling(5), Duration::from_secs(8));
        assert_eq!(p.backoff_ceiling(u32::MAX), Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_growing_pauses() {
        let provider = Retrying::new(
            Scripted::new(vec![
                Outcome::Fail(ProviderError::transient("busy")),
                Outcome::Fail(ProviderError::transient("busy")),
                Outcome::Stream(vec![text("a"), text("b")]),
            ]),
            policy(4),
        );
        let items = collect(provider.stream(&request()).await.unwrap()).await;
        assert_eq!(items, vec![text("a"), text("b")]);
        let calls = provider.inner().calls();
        assert_eq!(calls.len(), 3);
        let first_pause = calls[1] - calls[0];
        let second_pause = calls[2] - calls[1];
        assert!(
            first_pause >= Duration::from_millis(50) && first_pause <= Duration::from_millis(100),
            "{first_pause:?}"
        );
        assert!(
            second_pause >= Duration::from_millis(100)
                && second_pause <= Duration::from_millis(200),
            "{second_pause:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_sets_the_pause() {
        let provider = Retrying::new(
            Scripted::new(vec![
                Outcome::Fail(
                    ProviderError::transient("slow down")
                        .with_retry_after(Some(Duration::from_millis(320))),
                ),
                Outcome::Stream(vec![text("ok")]),
            ]),
            policy(4),
        );
        let _ = collect(provider.stream(&request()).await.unwrap()).await;
        let calls = provider.inner().calls();
        assert_eq!(calls[1] - calls[0], Duration::from_millis(320));
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_says_how_many_attempts() {
        let provider = Retrying::new(
            Scripted::new(
                (0..3)
                    .map(|_| Outcome::Fail(ProviderError::transient("HTTP 500")))
                    .collect(),
            ),
            policy(3),
        );
        let error = provider.stream(&request()).await.err().unwrap();
        assert_eq!(error.message, "HTTP 500; gave up after 3 attempts");
        assert!(error.transient);
        assert_eq!(provider.inner().calls().len(), 3);
        // The whole run waited at most the two capped pauses.
        let calls = provider.inner().calls();
        assert!(calls[2] - calls[0] <= Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn one_attempt_means_no_retry_and_no_count_in_the_message() {
        let provider = Retrying::new(
            Scripted::new(vec![Outcome::Fail(ProviderError::transient("down"))]),
            policy(1),
        );
        assert_eq!(
            provider.stream(&request()).await.err().unwrap().message,
            "down"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let provider = Retrying::new(
            Scripted::new(vec![Outcome::Fail(ProviderError::permanent("bad key"))]),
            policy(4),
        );
        let error = provider.stream(&request()).await.err().unwrap();
        assert_eq!(error, ProviderError::permanent("bad key"));
        assert_eq!(provider.inner().calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_before_the_first_delta_is_retried() {
        let provider = Retrying::new(
            Scripted::new(vec![
                Outcome::Stream(vec![Err(ProviderError::transient("overloaded"))]),
                Outcome::Stream(vec![text("fine")]),
            ]),
            policy(4),
        );
        let items = collect(provider.stream(&request()).await.unwrap()).await;
        assert_eq!(items, vec![text("fine")]);
        assert_eq!(provider.inner().calls().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_after_a_delta_is_passed_on_untouched() {
        let cut = ProviderError::transient("connection broke");
        let provider = Retrying::new(
            Scripted::new(vec![Outcome::Stream(vec![text("half"), Err(cut.clone())])]),
            policy(4),
        );
        let items = collect(provider.stream(&request()).await.unwrap()).await;
        assert_eq!(items, vec![text("half"), Err(cut)]);
        assert_eq!(provider.inner().calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_answer_is_not_an_error() {
        let provider = Retrying::new(Scripted::new(vec![Outcome::Stream(vec![])]), policy(4));
        assert!(
            collect(provider.stream(&request()).await.unwrap())
                .await
                .is_empty()
        );
    }
}
