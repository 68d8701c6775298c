//! JSON lines to a file, rotated by size: `flows.jsonl` is written, and when it would pass
//! `max_bytes` it becomes `flows.jsonl.1` (older ones shift up; beyond `max_files` the oldest is
//! deleted). Rotation never splits a line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use flowcore::aggregator::AggregatedRecord;

/// Rotation limits.
#[derive(Clone, Debug)]
pub struct Rotation {
    pub max_bytes: u64,
    /// Rotated files kept besides the live one.
    pub max_files: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: 100 << 20,
            max_files: 5,
        }
    }
}

/// A size-rotated JSON-lines file.
pub struct JsonLinesSink {
    path: PathBuf,
    rotation: Rotation,
    out: BufWriter<File>,
    written: u64,
    line: Vec<u8>,
    pub records: u64,
    pub rotations: u64,
}

impl JsonLinesSink {
    pub fn open(path: impl AsRef<Path>, rotation: Rotation) -> anyhow::Result<JsonLinesSink> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).with_context(|| {
                format!(
                    "creating the directory of the JSON lines sink {}",
                    path.display()
                )
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| {
                format!(
                    "opening the JSON lines sink {} for appending",
                    path.display()
                )
            })?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(JsonLinesSink {
            path,
            rotation,
            out: BufWriter::with_capacity(1 << 16, file),
            written,
            line: Vec::with_capacity(2048),
            records: 0,
            rotations: 0,
        })
    }

    pub fn write(&mut self, r: &AggregatedRecord) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, &super::record_json(r))?;
        self.line.push(b'\n');
        if self.written > 0 && self.written + self.line.len() as u64 > self.rotation.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(&self.line)?;
        self.written += self.line.len() as u64;
        self.records += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.rotation.max_files == 0 {
            fs::remove_file(&self.path)?;
        } else {
            let _ = fs::remove_file(numbered(self.rotation.max_files));
            for n in (1..self.rotation.max_files).rev() {
                if numbered(n).exists() {
                    fs::rename(numbered(n), numbered(n + 1))?;
                }
            }
            fs::rename(&self.path, numbered(1))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.out = BufWriter::with_capacity(1 << 16, file);
        self.written = 0;
        self.rotations += 1;
        Ok(())
    }
}

impl Drop for JsonLinesSink {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// Runs `sink` on a thread of its own (file IO) behind `rx`, until `rx` closes; the file is
/// flushed whenever the queue runs empty.
pub fn spawn(
    mut sink: JsonLinesSink,
    mut rx: super::SinkReceiver,
    metrics: super::SinkMetrics,
) -> std::thread::JoinHandle<()> {
    const SINK: &str = "json";
    let write = move |sink: &mut JsonLinesSink, b: &[AggregatedRecord]| {
        let mut ok = 0u64;
        for r in b {
            match sink.write(r) {
                Ok(()) => ok += 1,
                Err(e) => {
                    metrics.error(SINK);
                    metrics.drop_records(SINK, "write_failed", 1);
                    tracing::error!(error = %e, "JSON lines sink write failed");
                }
            }
        }
        if ok > 0 {
            metrics.out(SINK, ok);
        }
    };
    std::thread::Builder::new()
        .name("json-sink".into())
        .spawn(move || {
            while let Some(b) = rx.blocking_recv() {
                write(&mut sink, &b);
                while let Some(b) = rx.try_recv() {
                    write(&mut sink, &b);
                }
                if let Err(e) = sink.flush() {
                    tracing::error!(error = %e, "JSON lines sink flush failed");
                }
            }
            let _ = sink.flush();
        })
        .expect("spawning a thread")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowcore::aggregator::{Aggregator, AggregatorConfig, ExporterId};
    use flowcore::ipfix::{Decoder, DecoderConfig};
    use flowcore::model::Timestamp;

    fn records(n: usize) -> Vec<AggregatedRecord> {
        // Real records: the shipped sample's agent records through an aggregator.
        let mut agg = Aggregator::new(AggregatorConfig::default());
        let ex = ExporterId {
            addr: [192, 168, 49, 2].into(),
            domain: 1,
        };
        let mut out = Vec::new();
        let t = Timestamp::from_secs(1_764_000_000);
        let mut dec = Decoder::new(DecoderConfig::default());
        for m in crate::sample::agent_messages() {
            let _ = dec.decode(t, &m, |r| {
                let _ = agg.handle_record(t, ex, &r);
            });
        }
        agg.flush_all(t);
        while let Some(r) = agg.poll_record() {
            out.push(r);
        }
        assert!(!out.is_empty());
        out.iter().cycle().take(n).cloned().collect()
    }

    #[test]
    fn writes_lines_keyed_by_ie_names_and_rotates_by_size() {
        let dir = std::env::temp_dir().join(format!("flowlens-jsonl-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("flows.jsonl");
        let recs = records(200);
        {
            let mut s = JsonLinesSink::open(
                &path,
                Rotation {
                    max_bytes: 20_000,
                    max_files: 2,
                },
            )
            .unwrap();
            for r in &recs {
                s.write(r).unwrap();
            }
            assert!(s.rotations >= 2, "rotated {} times", s.rotations);
        }
        let live = fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(live.lines().next().unwrap()).unwrap();
        assert!(
            first.get("sourceIPv4Address").is_some() || first.get("sourceIPv6Address").is_some()
        );
        assert!(first.get("octetDeltaCountFromSourceNode").is_some());
        assert!(first.get("correlated").is_some());
        for p in [
            path.clone(),
            dir.join("flows.jsonl.1"),
            dir.join("flows.jsonl.2"),
        ] {
            let len = fs::metadata(&p).unwrap().len();
            assert!(len <= 20_000, "{} is {len} bytes", p.display());
            assert!(
                fs::read_to_string(&p)
                    .unwrap()
                    .lines()
                    .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
                "whole lines only"
            );
        }
        assert!(
            !dir.join("flows.jsonl.3").exists(),
            "only max_files rotated files are kept"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
