//! A process of the test's own whose stdout and stderr are collected as it
//! runs, killed if the test ends first.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running process and everything it printed so far (both streams, by line).
#[derive(Debug)]
pub struct Process {
    /// The process.
    pub child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    /// Starts `command` with its stdout and stderr collected.
    pub fn spawn(mut command: Command) -> Process {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the process");
        let output = Arc::new(Mutex::new(String::new()));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        let readers = [stdout, stderr]
            .into_iter()
            .map(|stream| {
                let output = Arc::clone(&output);
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { break };
                        let mut output = output.lock().expect("output");
                        output.push_str(&line);
                        output.push('\n');
                    }
                })
            })
            .collect();
        Process {
            child,
            output,
            readers,
        }
    }

    /// What it printed so far.
    pub fn text(&self) -> String {
        self.output.lock().expect("output").clone()
    }

    /// Waits until it has printed `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) {
        crate::wait_until(&format!("the process printed {needle:?}"), timeout, || {
            self.text().contains(needle)
        });
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends it the signal named `signal` (`"TERM"`, `"INT"`, ...).
    pub fn signal(&self, signal: &str) {
        let signal: nix::sys::signal::Signal = format!("SIG{signal}").parse().expect("a signal");
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("kill");
    }

    /// Waits for it to end; returns how, and all it printed.
    pub fn finish(&mut self) -> (ExitStatus, String) {
        let status = self.child.wait().expect("wait");
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (status, self.text())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
