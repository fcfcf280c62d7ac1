//! A harness for multi-process tests: real `paxos-node` processes on 127.0.0.1 with ports
//! picked at run time and data directories in a temporary folder; start, SIGKILL, restart,
//! stop; TCP proxies on peer links to cut and heal; a workload recorder and history checker;
//! and waits on conditions with deadlines (never bare sleeps as synchronisation); lazy disks
//! (FUSE) whose power a test cuts; scrapes of the nodes' Prometheus metrics.

pub mod cluster;
pub mod disk;
pub mod lazyfs;
pub mod ports;
pub mod power;
pub mod proxy;
pub mod scrape;
pub mod workload;

pub use cluster::{binary, wait_until, Cluster, CLUSTER};
