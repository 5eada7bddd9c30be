//! Parse edge cases of the config loader. File-level behaviour (fixtures, `fallacy check`) is in
//! `tests/config.rs`.

use std::path::Path;
use std::time::Duration;

use rstest::rstest;

use super::*;
use crate::toxic::ToxicKind;

fn toml(text: &str) -> Config {
    parse(text, false).unwrap_or_else(|d| panic!("{d:#?}"))
}

fn toml_errors(text: &str) -> Vec<Diagnostic> {
    parse(text, false).expect_err("should be refused")
}

fn json_errors(text: &str) -> Vec<Diagnostic> {
    parse(text, true).expect_err("should be refused")
}

// === line_col ===

#[rstest]
#[case("", 0, (1, 1))]
#[case("abc", 0, (1, 1))]
#[case("abc", 2, (1, 3))]
#[case("abc", 3, (1, 4))]
#[case("ab\ncd", 3, (2, 1))]
#[case("ab\ncd", 4, (2, 2))]
#[case("ab\n\n\nx", 5, (4, 1))]
// Offsets past the end clamp to the end.
#[case("ab\ncd", 99, (2, 3))]
// Columns count characters, not bytes: "é" is two bytes, "⏱" three.
#[case("é⏱x", 5, (1, 3))]
#[case("a\né⏱x", 7, (2, 3))]
// CRLF: the '\r' belongs to the previous line.
#[case("a\r\nbc", 4, (2, 2))]
fn line_col_is_one_based_in_characters(
    #[case] text: &str,
    #[case] offset: usize,
    #[case] want: (usize, usize),
) {
    assert_eq!(line_col(text, offset), want);
}

#[test]
fn line_col_inside_a_multibyte_character_does_not_panic() {
    // Byte 1 is inside "é": it reads as the start of that character.
    assert_eq!(line_col("é", 1), (1, 1));
    assert_eq!(line_col("x⏱", 3), (1, 2));
}

// === element_offsets ===

#[test]
fn element_offsets_find_each_top_level_element() {
    let text = "[\n  {\"a\": 1},\n  {\"b\": 2}\n]";
    let offsets = element_offsets(text);
    assert_eq!(offsets.len(), 2);
    assert_eq!(line_col(text, offsets[0]), (2, 3));
    assert_eq!(line_col(text, offsets[1]), (3, 3));
}

#[test]
fn element_offsets_skip_brackets_commas_and_quotes_inside_strings() {
    let text = r#"[{"name": "a], [b, {c}", "x": "\"],["}, {"name": "\\"}, "s,]"]"#;
    let offsets = element_offsets(text);
    let starts: Vec<&str> = offsets.iter().map(|&o| &text[o..o + 1]).collect();
    assert_eq!(starts, ["{", "{", "\""], "{offsets:?}");
    assert_eq!(offsets[1], text.find(r#"{"name": "\\"}"#).unwrap());
    assert_eq!(offsets[2], text.rfind(r#""s,]""#).unwrap());
}

#[test]
fn element_offsets_ignore_nested_arrays_and_objects() {
    let text = r#"[{"toxics": [{"a": [1, 2]}, {"b": {"c": [3]}}]}, {"x": 1}]"#;
    let offsets = element_offsets(text);
    assert_eq!(offsets, [1, text.rfind(r#"{"x""#).unwrap()]);
}

#[rstest]
#[case("[]", 0)]
#[case("[ \n ]", 0)]
#[case("  [\n\t42 ,\n\"x\" ]", 2)]
#[case("[1,2,3]", 3)]
fn element_offsets_count(#[case] text: &str, #[case] want: usize) {
    assert_eq!(element_offsets(text).len(), want, "{text:?}");
}

#[test]
fn json_errors_point_at_the_element_at_fault() {
    let text = "[\n  {\"name\": \"a\", \"upstream\": \"x:1\"},\n  {\"name\": \"b]\", \"upstream\": \"x\"},\n  {\"upstream\": \"x:1\"}\n]";
    let d = json_errors(text);
    let at: Vec<(usize, usize, &str)> = d
        .iter()
        .map(|d| (d.line, d.column, d.field.as_str()))
        .collect();
    assert_eq!(at, [(3, 3, "[1].upstream"), (4, 3, "[2].name")]);
}

#[test]
fn json_syntax_errors_use_one_based_columns() {
    // serde_json says column 0 for an error at the start of a line.
    let d = json_errors("[\n  {\"name\": \"a\"},\n");
    assert_eq!((d[0].line, d[0].column), (3, 1));
    assert!(d[0].message.starts_with("EOF while parsing"), "{d:?}");
    assert!(
        !d[0].message.contains("at line"),
        "position said twice: {d:?}"
    );
}

// === format detection ===

#[rstest]
#[case("fallacy.json", "", true)]
#[case("fallacy.JSON", "[[proxy]]", true)]
#[case("fallacy.toml", "[]", false)]
#[case("fallacy.conf", "[{\"name\": \"a\"}]", true)]
#[case("fallacy.conf", "  [\n  {\"name\": \"a\"}]", true)]
#[case("fallacy.conf", "[ ]", true)]
#[case("fallacy.conf", "[", true)]
#[case("fallacy.conf", "[[proxy]]\nname = \"a\"", false)]
#[case("fallacy.conf", "[server]\nseed = 1", false)]
#[case("fallacy.conf", "# comment\n[admin]", false)]
#[case("fallacy", "", false)]
fn format_is_chosen_by_extension_then_content(
    #[case] path: &str,
    #[case] text: &str,
    #[case] json: bool,
) {
    assert_eq!(is_json(Path::new(path), text), json, "{path} {text:?}");
}

// === defaults ===

#[test]
fn an_empty_file_is_the_default_config() {
    let c = toml("");
    assert_eq!(c, Config::default());
    assert_eq!(c.admin, None);
    assert_eq!(c.seed, None);
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.shutdown_grace, Duration::from_secs(5));
    assert!(c.proxies.is_empty());
}

#[test]
fn proxy_defaults_in_toml_and_json() {
    let from_toml = toml("[[proxy]]\nname = \"db\"\nupstream = \"db:5432\"\n");
    let from_json = parse(r#"[{"name": "db", "upstream": "db:5432"}]"#, true).unwrap();
    for c in [from_toml, from_json] {
        let p = &c.proxies[0];
        assert_eq!(p.proxy.name, "db");
        assert_eq!(p.proxy.listen, "127.0.0.1:0");
        assert_eq!(p.proxy.upstream, "db:5432");
        assert!(p.proxy.enabled);
        assert!(p.toxics.is_empty());
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
    }
}

#[test]
fn a_partial_server_section_keeps_the_other_defaults() {
    let c = toml("[server]\nshutdown_grace = \"1m\"\n");
    assert_eq!(c.shutdown_grace, Duration::from_secs(60));
    assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(c.seed, None);
}

// === toxics in TOML ===

fn only_toxic(c: &Config) -> &ToxicSpec {
    assert_eq!(c.proxies.len(), 1);
    assert_eq!(c.proxies[0].toxics.len(), 1);
    &c.proxies[0].toxics[0]
}

fn with_toxic(toxic: &str) -> String {
    format!("[[proxy]]\nname = \"p\"\nupstream = \"x:1\"\n\n[[proxy.toxic]]\n{toxic}\n")
}

#[rstest]
#[case("attributes = { latency = \"250ms\", jitter = \"1.5s\" }")]
#[case("attributes = { latency = 250, jitter = 1500 }")]
#[case("attributes = { latency = \"0.25s\", jitter = 1500 }")]
#[case("attributes = { Latency = 250, JITTER = \"1500ms\" }")]
#[case("[proxy.toxic.attributes]\nlatency = \"250000us\"\njitter = \"1.5s\"")]
fn latency_attributes_take_durations_or_milliseconds(#[case] attributes: &str) {
    let c = toml(&with_toxic(&format!("type = \"latency\"\n{attributes}")));
    let t = only_toxic(&c);
    match &t.kind {
        ToxicKind::Latency(a) => {
            assert_eq!(a.latency.duration(), Duration::from_millis(250));
            assert_eq!(a.jitter.duration(), Duration::from_millis(1500));
        }
        other => panic!("{other:?}"),
    }
    // Shown in Toxiproxy's units whatever the spelling.
    assert_eq!(
        serde_json::to_value(t).unwrap()["attributes"],
        serde_json::json!({"latency": 250, "jitter": 1500})
    );
}

#[rstest]
#[case("delay = \"250us\"", 250)]
#[case("delay = 250", 250)]
#[case("delay = \"2ms\"", 2000)]
fn slicer_delay_is_in_microseconds(#[case] delay: &str, #[case] micros: u64) {
    let c = toml(&with_toxic(&format!(
        "type = \"slicer\"\nattributes = {{ average_size = 100, {delay} }}"
    )));
    match &only_toxic(&c).kind {
        ToxicKind::Slicer(a) => {
            assert_eq!(a.average_size, 100);
            assert_eq!(a.size_variation, 0, "omitted attributes are 0");
            assert_eq!(a.delay.duration(), Duration::from_micros(micros));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn toxic_defaults_follow_toxiproxy() {
    let c = toml(&with_toxic("type = \"noop\""));
    let t = only_toxic(&c);
    assert_eq!(t.name, "noop_downstream");
    assert_eq!(t.stream, "downstream");
    assert_eq!(t.direction, crate::toxic::Direction::Downstream);
    assert_eq!(t.toxicity, 1.0);
    assert!(t.kind.attributes().is_empty());
}

#[test]
fn integer_toxicity_and_mixed_case_stream_are_accepted() {
    let c = toml(&with_toxic(
        "type = \"timeout\"\nstream = \"UpStream\"\ntoxicity = 0\nattributes = { timeout = 0 }",
    ));
    let t = only_toxic(&c);
    assert_eq!(t.toxicity, 0.0);
    assert_eq!(t.stream, "UpStream");
    assert_eq!(t.name, "timeout_UpStream");
    assert_eq!(t.direction, crate::toxic::Direction::Upstream);
}

#[test]
fn toxic_errors_point_at_the_value_at_fault() {
    let text = with_toxic("type = \"bandwidth\"\nattributes = { rate = 1.5 }");
    let d = toml_errors(&text);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].field, "proxy[0].toxic[0].attributes.rate");
    // Line 7 of the generated text, at `1.5`.
    assert_eq!((d[0].line, d[0].column), (7, 23));
    assert!(d[0].message.contains("floating point `1.5`"), "{d:?}");
}

#[test]
fn a_default_toxic_name_clash_points_at_the_toxic() {
    let text = with_toxic("type = \"noop\"\n\n[[proxy.toxic]]\ntype = \"noop\"");
    let d = toml_errors(&text);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].field, "proxy[0].toxic[1].name");
    assert_eq!((d[0].line, d[0].column), (8, 1));
    assert!(d[0].message.contains("\"noop_downstream\""), "{d:?}");
}

#[test]
fn serde_errors_name_the_field() {
    let d = toml_errors("[server]\nseed = \"42\"\n");
    assert_eq!(d[0].field, "server.seed");
    assert_eq!((d[0].line, d[0].column), (2, 8));
    let d = toml_errors(
        "[[proxy]]\nname = \"a\"\nupstream = \"x:1\"\n[[proxy.toxic]]\nname = 3\ntype = \"noop\"\n",
    );
    assert_eq!(d[0].field, "proxy[0].toxic[0].name");
    assert_eq!((d[0].line, d[0].column), (5, 8));
}

// === several errors ===

#[test]
fn every_error_is_reported_in_file_order() {
    let text = "[admin]\nlisten = \"nowhere\"\n\n[server]\nconnect_timeout = \"5\"\n\n[[proxy]]\nname = \"\"\nupstream = \"x:99999\"\n";
    let d = toml_errors(text);
    let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "admin.listen",
            "server.connect_timeout",
            "proxy[0].name",
            "proxy[0].upstream"
        ]
    );
    let lines: Vec<usize> = d.iter().map(|d| d.line).collect();
    assert_eq!(lines, [2, 5, 8, 9]);
}

#[test]
fn invalid_error_displays_one_line_per_problem() {
    let err = Error::Invalid {
        path: "f.toml".into(),
        diagnostics: vec![
            Diagnostic {
                line: 1,
                column: 2,
                field: "a.b".into(),
                message: "bad".into(),
            },
            Diagnostic {
                line: 3,
                column: 4,
                field: String::new(),
                message: "worse".into(),
            },
        ],
    };
    assert_eq!(err.to_string(), "f.toml:1:2: a.b: bad\nf.toml:3:4: worse");
}

// === addresses ===

#[rstest]
#[case("127.0.0.1:0", true)]
#[case("localhost:8474", true)]
#[case("[::1]:80", true)]
#[case("db:65535", true)]
#[case("db:65536", false)]
#[case("db:-1", false)]
#[case("db", false)]
#[case(":80", false)]
#[case("db:", false)]
fn addresses_are_host_and_port(#[case] addr: &str, #[case] ok: bool) {
    assert_eq!(
        validate_addr(addr).is_ok(),
        ok,
        "{addr}: {:?}",
        validate_addr(addr)
    );
}
