//! Node subnet leases in flannel's etcd layout, so that podswitch nodes
//! learn their peers from the store a cluster already runs and join
//! clusters whose other nodes run flanneld and the kernel's data path.
//!
//! [`flannel`] is the layout (network config, lease values, subnet keys,
//! the subnet file), plain data with no I/O; [`etcd`] acquires, renews and
//! follows leases in etcd. podswitchd turns the other nodes' leases into
//! peers and routes.

pub mod etcd;
pub mod flannel;
