//! The transport conformance suite (`transports::conformance`) over every transport of this
//! crate: one test per case and transport, from fixed seeds (`TEST_SEEDS` overrides them, as
//! ci/soak does).

mod sim {
    transports::conformance_tests!(
        transports::conformance::factories::SimFactory::new,
        testkit::seeds(&[0x51_u64])
    );
}

mod udp {
    transports::conformance_tests!(
        |_seed| transports::conformance::factories::UdpFactory::default(),
        testkit::seeds(&[0x0d_u64])
    );
}

mod tcp {
    transports::conformance_tests!(
        |_seed| transports::conformance::factories::TcpFactory::default(),
        testkit::seeds(&[0x7c_u64])
    );
}

/// TCP with direct reads off: every `rx_burst` polls epoll and reads only what it reports (the
/// path a transport with more established connections than `direct_reads` takes).
mod tcp_epoll_only {
    transports::conformance_tests!(
        |_seed| transports::conformance::factories::TcpFactory::with_config(
            transports::tcp::TcpConfig {
                direct_reads: 0,
                ..Default::default()
            }
        ),
        testkit::seeds(&[0x7d_u64])
    );
}
