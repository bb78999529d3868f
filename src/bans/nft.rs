//! The kernel's copy of the ban list (nftables): placeholder, written by the firewall work.
