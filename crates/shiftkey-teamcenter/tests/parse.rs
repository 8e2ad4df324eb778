//! Parsers: exceptions, ServiceData, dbValues — clear errors, never a panic.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value, json};
use shiftkey_teamcenter::TcError;
use shiftkey_teamcenter::wire::{Props, ServiceData, check_exception};

#[test]
fn exceptions_are_typed_and_sso_hints_reported() {
    let e = check_exception(&json!({".QName": "http://teamcenter.com/Schemas/Soa/2006-03/Exceptions.InvalidCredentialsException", "ssoServerURL": "http://host:8086/tcssols", "ssoAppID": "Teamcenter", "code": 515143, "level": 3, "message": "bad"})).unwrap_err();
    assert!(matches!(
        &e,
        TcError::InvalidCredentials {
            code: 515143,
            sso: Some(_),
            ..
        }
    ));
    assert!(
        e.to_string().contains("http://host:8086/tcssols")
            && e.to_string().contains("Security Services"),
        "{e}"
    );
    let e = check_exception(&json!({".QName": "x/Exceptions.InternalServerException", "messages": [{"code": 214022, "level": 3, "message": "first"}, {"code": 214004, "level": 3, "message": "top"}]})).unwrap_err();
    assert_eq!(e.to_string(), "Teamcenter internal error: top");
    let e = check_exception(
        &json!({".QName": "x/Exceptions.ServiceException", "code": 7, "message": "m", "uid": "u"}),
    )
    .unwrap_err();
    assert!(matches!(e, TcError::Service { code: 7, .. }));
    assert!(check_exception(&json!({".QName": "x/Session.LoginResponse"})).is_ok());
}

#[test]
fn bad_db_values_name_the_object_and_property() {
    let sd = ServiceData::parse(
        &json!({"ServiceData": {"modelObjects": {"U1": {"uid": "U1", "className": "MEOPRevision", "props": {"last_mod_date": {"dbValues": ["yesterday"]}, "fnd0IsObsolete": {"dbValues": ["maybe"]}, "ref": {"dbValues": ["AAAAAAAAAAAAAA", "X"]}}}}}}),
        "loadObjects",
    )
    .unwrap();
    let o = &sd.objects["U1"];
    let e = Props::of(o).date("last_mod_date").unwrap_err().to_string();
    assert!(
        e.contains("MEOPRevision U1 property last_mod_date") && e.contains("yesterday"),
        "{e}"
    );
    assert!(
        Props::of(o)
            .flag("fnd0IsObsolete")
            .unwrap_err()
            .to_string()
            .contains("fnd0IsObsolete")
    );
    assert_eq!(
        Props::of(o).refs("ref"),
        vec!["X".to_owned()],
        "the null UID is dropped"
    );
    assert!(
        Props::of(o)
            .string("missing")
            .unwrap_err()
            .to_string()
            .contains("missing")
    );
    let e = ServiceData::parse(
        &json!({"ServiceData": {"modelObjects": {"U2": {"props": {"p": {"dbValues": [1]}}}}}}),
        "op",
    )
    .unwrap_err();
    assert!(e.to_string().contains("property p of U2"), "{e}");
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![
            "modelObjects",
            "props",
            "dbValues",
            "ServiceData",
            "partialErrors",
            ".QName",
            "x.InvalidUserException",
            "AAAAAAAAAAAAAA",
            ""
        ])
        .prop_map(|s| json!(s)),
        "[a-zA-Z.]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "ServiceData",
                    "modelObjects",
                    "props",
                    "dbValues",
                    "plain",
                    "partialErrors",
                    "errorValues",
                    "uid",
                    "className",
                    ".QName",
                    "code",
                    "message",
                    "messages",
                    "ssoServerURL"
                ])
                .prop_map(str::to_owned),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/parse.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn parsers_never_panic_on_arbitrary_json(v in json_value()) {
        let _ = check_exception(&v);
        if let Ok(sd) = ServiceData::parse(&v, "fuzz") {
            for o in sd.objects.values() {
                let p = Props::of(o);
                for name in o.props.keys() {
                    let _ = (p.date(name), p.flag(name), p.number(name), p.refs(name), p.string(name));
                }
            }
        }
    }
}

/// A partial error reads as the object and each of its errors, for the log and `/status`.
#[test]
fn a_partial_error_reads_as_its_object_and_errors() {
    let sd = ServiceData::parse(
        &json!({"ServiceData": {"partialErrors": [{"uid": "AAAA", "errorValues": [
            {"code": 214121, "level": 3, "message": "no such property"},
            {"code": 1, "level": 1, "message": "and more"}]}]}}),
        "x",
    )
    .unwrap();
    assert_eq!(
        sd.partial_errors[0].to_string(),
        "AAAA: code 214121: no such property; code 1: and more"
    );
}
