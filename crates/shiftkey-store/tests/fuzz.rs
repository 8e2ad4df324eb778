//! No input makes the decoder panic; the only input that decodes is a real file.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const KEY: [u8; 32] = [7; 32];

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/fuzz.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        prop_assert!(!shiftkey_store::decode_for_fuzzing(&bytes, &KEY));
    }

    #[test]
    fn headers_that_look_right_never_panic(tail in prop::collection::vec(any::<u8>(), 0..300), version in 0u8..4, kdf in 0u8..3) {
        let mut bytes = b"SKTS".to_vec();
        bytes.push(version);
        bytes.push(kdf);
        bytes.extend(tail);
        prop_assert!(!shiftkey_store::decode_for_fuzzing(&bytes, &KEY));
    }
}
