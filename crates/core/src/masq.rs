//! Masquerade and forward rule sets (iptables-restore text and nft batches), pure.
