//! Entry point of the coverage-guided fuzz targets for profile loading (`fuzz/`, run by
//! `cargo xtask fuzz`) and of the regression tests that replay their corpora and past crashes.
//! Not part of the documented API.

use crate::{AgentProfile, FieldError, Format, ProfileError};

/// Loads `data` as a profile file in `format`. Bad input must be a typed error that names a
/// field (or a line and column), never a panic or the validator's "the typed model refused a
/// document I accepted"; a profile that loads must validate, and its canonical JSON must load
/// back to the same content address.
pub fn profile(format: Format, data: &[u8]) {
    match AgentProfile::from_slice(data, format) {
        Ok(profile) => {
            if let Err(error) = profile.validate() {
                panic!("a loaded profile does not validate: {error}");
            }
            let canonical = profile.canonical_json();
            match AgentProfile::from_json_str(&canonical) {
                Ok(again) => assert_eq!(
                    again.content_address(),
                    profile.content_address(),
                    "the canonical JSON loads back as another profile: {canonical}"
                ),
                Err(error) => {
                    panic!("the canonical JSON does not load back ({error}): {canonical}")
                }
            }
        }
        Err(ProfileError::Invalid(errors)) => {
            assert!(!errors.is_empty(), "an invalid profile with no error");
            for FieldError { expected, .. } in errors.iter() {
                assert!(
                    !expected.starts_with("a profile the typed model accepts"),
                    "the validator accepted what the typed model refuses: {expected}"
                );
            }
        }
        Err(_) => {}
    }
}
