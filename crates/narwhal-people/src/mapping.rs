//! Import mappings: which column of a file becomes which field, custom field or tag.
//!
//! ```toml
//! [source]
//! name = "ohio-voter-file"       # provenance: recorded against every field it sets
//! delimiter = ","                # "," or "\t" (default: from the file extension)
//! encoding = "utf-8"             # or "latin1" for files from older systems
//!
//! [fields]                       # Narwhal field = "COLUMN HEADER"
//! voter_id = "SOS_VOTERID"
//! first_name = "FIRST_NAME"
//! email = "EMAIL"
//!
//! [custom]                       # custom field key = "COLUMN HEADER"
//! party = "PARTY_AFFILIATION"
//!
//! [tags]
//! always = ["voter-file"]        # on every row
//! [[tags.from_column]]           # a tag "prefix + value" when the cell is not empty
//! column = "GENERAL-11/06/2012"
//! prefix = "voted:2012g:"
//! [[tags.from_column]]           # or a fixed tag when the cell says yes
//! column = "IS_DONOR"
//! tag = "donor"
//!
//! [defaults]                     # used when a row's cell is empty
//! state = "OH"
//! email_consent = "subscribed"
//! ```

use narwhal_domain::{CustomFieldKey, Tag};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The fields a column can map to.
pub const FIELDS: &[&str] = &[
    "voter_id",
    "first_name",
    "middle_name",
    "last_name",
    "suffix",
    "email",
    "email2",
    "phone",
    "phone2",
    "address_line1",
    "address_line2",
    "city",
    "state",
    "zip",
    "county",
    "precinct",
    "email_consent",
    "sms_consent",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub source: SourceSpec,
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub custom: BTreeMap<CustomFieldKey, String>,
    #[serde(default)]
    pub tags: TagSpec,
    #[serde(default)]
    pub defaults: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    #[serde(default)]
    pub delimiter: Option<String>,
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    #[default]
    #[serde(alias = "utf8")]
    Utf8,
    #[serde(alias = "iso-8859-1", alias = "windows-1252")]
    Latin1,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagSpec {
    #[serde(default)]
    pub always: Vec<Tag>,
    #[serde(default)]
    pub from_column: Vec<TagColumn>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagColumn {
    pub column: String,
    /// The tag is `prefix + cell` (e.g. `voted:2012g:` + `D`).
    #[serde(default)]
    pub prefix: String,
    /// Or: this fixed tag when the cell says yes (anything but empty, 0, n, no, false).
    #[serde(default)]
    pub tag: Option<Tag>,
}

impl TagColumn {
    /// The tag a cell gives, if any (`Err` when `prefix + cell` is not a valid tag).
    pub fn tag_for(&self, cell: &str) -> Result<Option<Tag>, narwhal_domain::ParseError> {
        let cell = cell.trim();
        if cell.is_empty() {
            return Ok(None);
        }
        match &self.tag {
            Some(t) => {
                let no = matches!(
                    cell.to_ascii_lowercase().as_str(),
                    "0" | "n" | "no" | "false" | "f"
                );
                Ok((!no).then(|| t.clone()))
            }
            None => Tag::parse(&format!("{}{cell}", self.prefix)).map(Some),
        }
    }
}

/// A mapping file that cannot be used: names the line and column when TOML says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MappingError(pub String);

impl Mapping {
    pub fn parse(text: &str) -> Result<Self, MappingError> {
        let m: Mapping = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            MappingError(format!("{at}{}", e.message()))
        })?;
        for f in m.fields.keys() {
            if !FIELDS.contains(&f.as_str()) {
                return Err(MappingError(format!(
                    "[fields] has unknown field {f:?}; known fields: {}",
                    FIELDS.join(", ")
                )));
            }
        }
        for f in m.defaults.keys() {
            if !FIELDS.contains(&f.as_str()) {
                return Err(MappingError(format!("[defaults] has unknown field {f:?}")));
            }
        }
        if m.source.name.trim().is_empty() {
            return Err(MappingError("[source] name must not be empty".into()));
        }
        if let Some(d) = &m.source.delimiter {
            if !matches!(d.as_str(), "," | "\t" | "\\t" | ";" | "|") {
                return Err(MappingError(
                    "[source] delimiter must be one of , \\t ; |".into(),
                ));
            }
        }
        if !(m.fields.contains_key("voter_id")
            || m.fields.contains_key("email")
            || m.fields.contains_key("phone"))
        {
            return Err(MappingError(
                "[fields] must map at least one of voter_id, email or phone so rows can be matched"
                    .into(),
            ));
        }
        Ok(m)
    }

    /// The delimiter byte: the mapping's, else from the file name (`.tsv`/`.tab` = tab).
    pub fn delimiter_for(&self, path: &std::path::Path) -> u8 {
        match self.source.delimiter.as_deref() {
            Some("\t") | Some("\\t") => b'\t',
            Some(";") => b';',
            Some("|") => b'|',
            Some(_) => b',',
            None => {
                let ext = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                if ext == "tsv" || ext == "tab" {
                    b'\t'
                } else {
                    b','
                }
            }
        }
    }

    /// Every column the mapping reads.
    pub fn columns(&self) -> Vec<&str> {
        let mut c: Vec<&str> = self.fields.values().map(String::as_str).collect();
        c.extend(self.custom.values().map(String::as_str));
        c.extend(self.tags.from_column.iter().map(|t| t.column.as_str()));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line() {
        let e = Mapping::parse("[source]\nname = \"x\"\n[fields]\nvoter_id = 12\n").unwrap_err();
        assert!(e.0.starts_with("line 4"), "{e}");
        let e = Mapping::parse("[source]\nname = \"x\"\n[fields]\nshoe = \"A\"\n").unwrap_err();
        assert!(e.0.contains("unknown field \"shoe\""), "{e}");
        let e =
            Mapping::parse("[source]\nname = \"x\"\n[fields]\nfirst_name = \"A\"\n").unwrap_err();
        assert!(e.0.contains("at least one of"), "{e}");
        let e = Mapping::parse(
            "[source]\nname = \"x\"\n[custom]\nBad = \"A\"\n[fields]\nvoter_id=\"V\"\n",
        )
        .unwrap_err();
        assert!(e.0.contains("line 4"), "{e}");
    }

    #[test]
    fn tag_columns() {
        let fixed = TagColumn {
            column: "X".into(),
            prefix: String::new(),
            tag: Some(Tag::parse("donor").unwrap()),
        };
        assert_eq!(fixed.tag_for("yes").unwrap().unwrap().as_str(), "donor");
        assert_eq!(fixed.tag_for("No").unwrap(), None);
        assert_eq!(fixed.tag_for(" ").unwrap(), None);
        let pre = TagColumn {
            column: "X".into(),
            prefix: "voted:".into(),
            tag: None,
        };
        assert_eq!(pre.tag_for("D").unwrap().unwrap().as_str(), "voted:d");
        assert!(pre.tag_for("a;b").is_err());
    }

    #[test]
    fn delimiter_from_extension() {
        let m = Mapping::parse("[source]\nname = \"x\"\n[fields]\nvoter_id = \"V\"\n").unwrap();
        assert_eq!(m.delimiter_for(std::path::Path::new("a.tsv")), b'\t');
        assert_eq!(m.delimiter_for(std::path::Path::new("a.csv")), b',');
    }
}
