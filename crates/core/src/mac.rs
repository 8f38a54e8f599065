//! Ethernet addresses as flannel writes them in lease data (`aa:bb:cc:dd:ee:ff`).

/// `aa:bb:cc:dd:ee:ff`, lower case.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A unicast address other than all zeros: the only kind a VTEP can have.
pub fn is_unicast_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 0x01 == 0 && *mac != [0; 6]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = parse_mac("C6:d2:32:6f:8f:44").unwrap();
        assert_eq!(format_mac(&mac), "c6:d2:32:6f:8f:44");
        for bad in [
            "",
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:00",
            "c6:d2:32:6f:8f:4",
            "+6:d2:32:6f:8f:44",
            "zz:d2:32:6f:8f:44",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert!(is_unicast_mac(&mac));
        assert!(!is_unicast_mac(&[0; 6]));
        assert!(!is_unicast_mac(&[0x01, 0, 0x5e, 0, 0, 1]));
    }
}
