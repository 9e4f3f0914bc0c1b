//! Programming the node's kernel: links and routes through iproute2, packet filtering through
//! one nftables table of our own. Each `apply` reads what is there, compares it with what
//! should be, and changes only the difference.

pub mod cmd;
pub mod dump;
pub mod links;
pub mod netlink;
pub mod nft;
pub mod services;
