//! A private PostgreSQL cluster started from the installed server binaries, in a temporary
//! directory on a free local port. Used by `herald demo` and by the end-to-end tests.
//!
//! initdb refuses to run as root, so when we are root the server runs as the `postgres`
//! user (through `runuser`).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no PostgreSQL server binaries found (looked for initdb via pg_config and in /usr/lib/postgresql/*/bin); install postgresql-15")]
    NoBinaries,
    #[error("{step} failed: {detail}")]
    Step { step: String, detail: String },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

pub struct PgCluster {
    pub dir: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    run_as: Option<String>,
    running: bool,
}

/// Options for a private cluster.
#[derive(Default, Clone)]
pub struct ClusterOptions {
    /// Extra `postgresql.conf` settings, e.g. `("synchronous_commit", "off")`.
    pub settings: Vec<(String, String)>,
}

impl PgCluster {
    /// initdb + start. The directory is removed when the value is dropped.
    ///
    /// A free port may be taken by someone else between choosing it and the server binding
    /// it (tests start clusters in parallel), so a failed start is tried again, on another
    /// port, twice.
    pub fn start(options: &ClusterOptions) -> Result<Self, ClusterError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(options) {
                Err(e) if attempt < 3 => {
                    eprintln!("herald: starting a private cluster failed ({e}); trying again");
                }
                result => return result,
            }
        }
    }

    fn start_once(options: &ClusterOptions) -> Result<Self, ClusterError> {
        let bindir = find_bindir().ok_or(ClusterError::NoBinaries)?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some("postgres".to_string())
        } else {
            None
        };
        let base = std::env::var_os("HERALD_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "herald-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let mut cluster = PgCluster {
            dir,
            port,
            bindir,
            run_as,
            running: false,
        };
        if let Some(user) = &cluster.run_as {
            run(Command::new("chown").arg(user).arg(&cluster.dir), "chown")?;
        }
        let data = cluster.data_dir();
        cluster.pg(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        let mut conf = String::from(
            "\n# herald private cluster\nlisten_addresses = '127.0.0.1'\nmax_connections = 200\nfsync = off\nlog_min_messages = warning\n",
        );
        conf.push_str(&format!(
            "port = {}\nunix_socket_directories = '{}'\n",
            port,
            path_str(&cluster.dir)
        ));
        for (k, v) in &options.settings {
            conf.push_str(&format!("{k} = '{v}'\n"));
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path)?;
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// libpq-style connection string for the `postgres` superuser.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={}",
            self.port, dbname
        )
    }

    /// Start the server (after `stop`).
    pub fn start_server(&mut self) -> Result<(), ClusterError> {
        let data = self.data_dir();
        let log = self.dir.join("server.log");
        self.pg(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stop the server (fast shutdown: sessions are disconnected, like a restart).
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        let data = self.data_dir();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        )?;
        self.running = false;
        Ok(())
    }

    /// Stop the server the way a crash would (`pg_ctl -m immediate`): no checkpoint, sessions
    /// cut off.
    pub fn stop_immediate(&mut self) -> Result<(), ClusterError> {
        let data = self.data_dir();
        self.pg(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
        )?;
        self.running = false;
        Ok(())
    }

    /// Reload the configuration (`pg_ctl reload`).
    pub fn reload(&self) -> Result<(), ClusterError> {
        self.pg("pg_ctl", &["-D", path_str(&self.data_dir()), "reload"])
    }

    /// Append settings to postgresql.conf (take effect at the next reload or start).
    pub fn configure(&self, settings: &[(&str, &str)]) -> Result<(), ClusterError> {
        let conf_path = self.data_dir().join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path)?;
        for (k, v) in settings {
            conf.push_str(&format!("{k} = '{v}'\n"));
        }
        std::fs::write(&conf_path, conf)?;
        Ok(())
    }

    /// A streaming standby of this server, made with `pg_basebackup -R` and started on its
    /// own port.
    pub fn standby(&self) -> Result<PgCluster, ClusterError> {
        let dir = PathBuf::from(format!("{}-standby", self.dir.display()));
        std::fs::create_dir_all(&dir)?;
        let mut standby = PgCluster {
            dir,
            port: free_port()?,
            bindir: self.bindir.clone(),
            run_as: self.run_as.clone(),
            running: false,
        };
        if let Some(user) = &standby.run_as {
            run(Command::new("chown").arg(user).arg(&standby.dir), "chown")?;
        }
        let data = standby.data_dir();
        let port = self.port.to_string();
        standby.pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                path_str(&data),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        )?;
        let socket_dir = path_str(&standby.dir).to_string();
        standby.configure(&[
            ("port", &standby.port.to_string()),
            ("unix_socket_directories", &socket_dir),
        ])?;
        standby.start_server()?;
        Ok(standby)
    }

    /// Promote a standby to a primary and wait until it accepts writes.
    pub fn promote(&self) -> Result<(), ClusterError> {
        self.pg(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data_dir()),
                "-w",
                "-t",
                "60",
                "promote",
            ],
        )
    }

    /// Restart the server.
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.stop()?;
        self.start_server()
    }

    fn pg(&self, tool: &str, args: &[&str]) -> Result<(), ClusterError> {
        let exe = self.bindir.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(&self.dir);
        run(&mut cmd, tool)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop();
        }
        if std::env::var_os("HERALD_KEEP_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn run(cmd: &mut Command, step: &str) -> Result<(), ClusterError> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Step {
            step: step.to_string(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .trim()
            .to_string(),
        })
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("non-UTF-8 temporary path")
}

/// The server binaries: `pg_config --bindir` when it has initdb, else the newest
/// /usr/lib/postgresql/<version>/bin.
pub fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HERALD_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
