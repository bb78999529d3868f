//! The kernel's copy of the ban list (nftables): placeholder, written by the firewall work.

/// One element of the kernel's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub net: ipnet::IpNet,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub repaired: bool,
    pub added: usize,
    pub removed: usize,
    pub dropped_packets: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables support is not built yet")]
    Missing,
}

pub struct Nft {
    table: String,
}

impl Nft {
    pub fn new(table: &str) -> Nft {
        Nft {
            table: table.to_string(),
        }
    }

    pub async fn reconcile(&self, desired: &[Element], now: i64) -> Result<Reconciled, NftError> {
        let _ = (desired, now, &self.table);
        Err(NftError::Missing)
    }

    pub async fn remove(&self) -> Result<bool, NftError> {
        Err(NftError::Missing)
    }
}
