//! One definition for the small enums carried on the wire as a single byte.
//!
//! [`wire_enum!`](crate::wire_enum) declares a `#[repr(u8)]` enum whose variants each name
//! their wire value, and derives from that one list the parser (`from_u8`, `None` for a value
//! no variant has) and `ALL`, every variant in declaration order. The transport kind, the rpc
//! packet types and response statuses, and the session-management message types and statuses
//! are all declared with it, so a new variant cannot be added to the enum and forgotten in its
//! parser.
//!
//! ```
//! transports::wire_enum! {
//!     /// A traffic light.
//!     #[derive(Clone, Copy, Debug, PartialEq, Eq)]
//!     pub enum Light {
//!         /// Stop.
//!         Red = 1,
//!         /// Go.
//!         Green = 2,
//!     }
//! }
//! assert_eq!(Light::from_u8(2), Some(Light::Green));
//! assert_eq!(Light::from_u8(3), None);
//! assert!(Light::ALL.iter().all(|&l| Light::from_u8(l as u8) == Some(l)));
//! ```

/// Declares a one-byte wire enum with its parser; see the [module docs](crate::wire).
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// Parses the wire value; `None` for a value no variant has.
            pub fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $( $value => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }
    };
}
