//! What the tests against the remote queues (Kafka, SQS) share: names no other run uses, and
//! the librdkafka properties that cannot travel through the environment.

/// `<prefix>-<pid>-<unix millis>`: a topic, queue or group name of this run only.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

/// A config file with librdkafka properties (dotted names cannot travel through the
/// environment): short consumer-group timers so a restarted flusher joins quickly, plus
/// `extra` lines of `[events.queue.properties]`.
pub fn kafka_config_file(name: &str, extra: &str) -> std::path::PathBuf {
    let path = super::scratch(&format!("{name}-config")).join("config.toml");
    std::fs::write(
        &path,
        format!("[events.queue.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"300\"\n{extra}"),
    )
    .unwrap();
    path
}
