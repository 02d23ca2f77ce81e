//! The dead-letter stream: reading the letters back (oldest first) and replaying them to the
//! subscriber they failed for.

use std::collections::BTreeSet;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::HeaderMap;

use super::headers::{
    decode_header_text, encode_header_text, header_number, header_text, ATTEMPTS_HEADER, DEAD_AT_MS_HEADER,
    ERROR_HEADER, PUBLISHED_MS_HEADER, REPLAY_TO_HEADER, SUBSCRIBER_HEADER, TOPIC_HEADER,
};
use super::NatsBroker;
use crate::capability::messaging::{check_topic, now_unix_ms, BrokerError, DeadLetter, NewDeadLetter};

impl NatsBroker {
    /// The dead letters with their stream sequences, oldest first.
    pub(super) async fn read_dead_letters(
        &self,
        subscriber: Option<&str>,
    ) -> Result<Vec<(u64, DeadLetter)>, BrokerError> {
        self.ensure_ready().await?;
        let names = self.names();
        let filter = match subscriber {
            Some(subscriber) => names.dead_subject(subscriber),
            None => format!("{}.>", names.dead_prefix),
        };
        let stream = self.shared.stream(&names.dead_stream).await?;
        let mut letters = Vec::new();
        let mut next_sequence = 1;
        loop {
            // The next stored message at or after the sequence, skipping deleted ones.
            let found = stream
                .raw_message_builder()
                .sequence(next_sequence)
                .next_by_subject(filter.clone())
                .send()
                .await;
            let message = match found {
                Ok(message) => message,
                Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(err) => return Err(self.failed("could not read the dead letters", err)),
            };
            next_sequence = message.sequence + 1;
            let letter = self.dead_letter_of(message);
            if subscriber.is_none_or(|subscriber| letter.1.subscriber == subscriber) {
                letters.push(letter);
            }
        }
        Ok(letters)
    }

    fn dead_letter_of(&self, message: StreamMessage) -> (u64, DeadLetter) {
        let headers = Some(&message.headers);
        let subscriber = header_text(headers, SUBSCRIBER_HEADER).map_or_else(
            || {
                let token = message.subject.as_str().rsplit('.').next().unwrap_or_default();
                token.to_string()
            },
            decode_header_text,
        );
        let letter = NewDeadLetter {
            topic: header_text(headers, TOPIC_HEADER)
                .map(decode_header_text)
                .unwrap_or_default(),
            payload: message.payload.to_vec(),
            attempts: header_number(headers, ATTEMPTS_HEADER)
                .and_then(|attempts| u32::try_from(attempts).ok())
                .unwrap_or(0),
            error: header_text(headers, ERROR_HEADER)
                .map(decode_header_text)
                .unwrap_or_default(),
            published_at_ms: header_number(headers, PUBLISHED_MS_HEADER),
        };
        let dead_at_ms = header_number(headers, DEAD_AT_MS_HEADER).unwrap_or(0);
        (
            message.sequence,
            DeadLetter::new(message.sequence.to_string(), subscriber, &letter, dead_at_ms),
        )
    }

    /// Replays the dead letters of `ids` (every one when empty), optionally of one subscriber;
    /// see [`Broker::replay`](crate::capability::messaging::Broker::replay).
    pub(super) async fn replay_dead_letters(
        &self,
        subscriber: Option<&str>,
        ids: &[String],
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let letters = self.read_dead_letters(subscriber).await?;
        let chosen: Vec<(u64, DeadLetter)> = if ids.is_empty() {
            letters
        } else {
            // Every id is checked before anything is replayed.
            let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
            if let Some(unknown) = wanted
                .iter()
                .find(|id| !letters.iter().any(|(_, letter)| letter.id == **id))
            {
                let scope = subscriber
                    .map(|subscriber| format!(" for `{subscriber}`"))
                    .unwrap_or_default();
                return Err(BrokerError::Invalid(format!(
                    "no dead letter with id `{unknown}`{scope} (see `mosaic dlq list`)"
                )));
            }
            letters
                .into_iter()
                .filter(|(_, letter)| wanted.contains(letter.id.as_str()))
                .collect()
        };
        // Every payload is decoded before anything moves, so that one unreadable letter replays none.
        let payloads = chosen
            .iter()
            .map(|(_, letter)| letter.payload_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let dead_stream = self.shared.stream(&self.names().dead_stream).await?;
        let mut replayed = Vec::with_capacity(chosen.len());
        for ((sequence, letter), payload) in chosen.into_iter().zip(payloads) {
            check_topic(&letter.topic)?;
            let mut headers = HeaderMap::new();
            headers.insert(PUBLISHED_MS_HEADER, now_unix_ms().to_string());
            headers.insert(REPLAY_TO_HEADER, encode_header_text(&letter.subscriber));
            self.publish_to_stream(
                self.names().topic_subject(&letter.topic),
                headers,
                &payload,
                &format!("did not accept the replay of dead letter {}", letter.id),
            )
            .await?;
            dead_stream.delete_message(sequence).await.map_err(|err| {
                self.failed(
                    &format!(
                        "replayed dead letter {} but could not remove it from the dead letters, so it is still listed",
                        letter.id
                    ),
                    err,
                )
            })?;
            replayed.push(letter);
        }
        Ok(replayed)
    }
}
