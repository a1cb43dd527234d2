//! A deterministic synthetic campaign: a 70-column state voter file with email
//! subscribers, donors and volunteers, spread over one state's counties and precincts.
//! The same seed always gives the same file. Used by `narwhal demo`, the tests and
//! `narwhal bench import`.

use std::io::Write;

/// SplitMix64: tiny, fast and stable across versions (unlike `rand`'s `StdRng`).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn pick<'a>(&mut self, xs: &'a [&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const FIRST: &[&str] = &[
    "Mary",
    "James",
    "Patricia",
    "John",
    "Jennifer",
    "Robert",
    "Linda",
    "Michael",
    "Elizabeth",
    "William",
    "Barbara",
    "David",
    "Susan",
    "Richard",
    "Jessica",
    "Joseph",
    "Sarah",
    "Thomas",
    "Karen",
    "Charles",
    "Maria",
    "Luis",
    "Aisha",
    "Wei",
    "Fatima",
    "Andre",
    "Keisha",
    "Diego",
    "Priya",
    "Tyrone",
    "Mei",
    "Omar",
];
const LAST: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Nguyen",
    "Patel",
];
const STREETS: &[&str] = &[
    "Main St",
    "High Street",
    "Broad St",
    "Oak Avenue",
    "Maple Ave",
    "Elm St",
    "Park Road",
    "Lake Dr",
    "Cedar Lane",
    "North Washington Street",
    "S 4th St",
    "Church St",
    "Mill Rd",
    "Sunset Blvd",
    "Hill Ct",
];
/// (county, city, ZIP prefix)
pub const COUNTIES: &[(&str, &str, &str)] = &[
    ("FRANKLIN", "Columbus", "432"),
    ("CUYAHOGA", "Cleveland", "441"),
    ("HAMILTON", "Cincinnati", "452"),
    ("SUMMIT", "Akron", "443"),
    ("MONTGOMERY", "Dayton", "454"),
    ("LUCAS", "Toledo", "436"),
    ("BUTLER", "Hamilton", "450"),
    ("STARK", "Canton", "447"),
    ("LORAIN", "Elyria", "440"),
    ("MAHONING", "Youngstown", "445"),
    ("LAKE", "Painesville", "440"),
    ("WARREN", "Lebanon", "450"),
    ("DELAWARE", "Delaware", "430"),
    ("CLERMONT", "Batavia", "451"),
    ("MEDINA", "Medina", "442"),
    ("LICKING", "Newark", "430"),
    ("GREENE", "Xenia", "453"),
    ("PORTAGE", "Ravenna", "442"),
    ("FAIRFIELD", "Lancaster", "431"),
    ("CLARK", "Springfield", "455"),
];
const PARTIES: &[&str] = &["D", "R", "", "", "L", "G"];

const BASE_COLUMNS: &[&str] = &[
    "SOS_VOTERID",
    "COUNTY_NUMBER",
    "COUNTY_ID",
    "LAST_NAME",
    "FIRST_NAME",
    "MIDDLE_NAME",
    "SUFFIX",
    "DATE_OF_BIRTH",
    "REGISTRATION_DATE",
    "VOTER_STATUS",
    "PARTY_AFFILIATION",
    "RESIDENTIAL_ADDRESS1",
    "RESIDENTIAL_SECONDARY_ADDR",
    "RESIDENTIAL_CITY",
    "RESIDENTIAL_STATE",
    "RESIDENTIAL_ZIP",
    "RESIDENTIAL_ZIP_PLUS4",
    "RESIDENTIAL_COUNTRY",
    "RESIDENTIAL_POSTALCODE",
    "MAILING_ADDRESS1",
    "MAILING_SECONDARY_ADDRESS",
    "MAILING_CITY",
    "MAILING_STATE",
    "MAILING_ZIP",
    "MAILING_ZIP_PLUS4",
    "MAILING_COUNTRY",
    "MAILING_POSTAL_CODE",
    "CAREER_CENTER",
    "CITY",
    "CITY_SCHOOL_DISTRICT",
    "COUNTY_COURT_DISTRICT",
    "CONGRESSIONAL_DISTRICT",
    "COURT_OF_APPEALS",
    "EDU_SERVICE_CENTER_DISTRICT",
    "EXEMPTED_VILL_SCHOOL_DISTRICT",
    "LIBRARY",
    "LOCAL_SCHOOL_DISTRICT",
    "MUNICIPAL_COURT_DISTRICT",
    "PRECINCT_NAME",
    "PRECINCT_CODE",
    "STATE_BOARD_OF_EDUCATION",
    "STATE_REPRESENTATIVE_DISTRICT",
    "STATE_SENATE_DISTRICT",
    "TOWNSHIP",
    "VILLAGE",
    "WARD",
    "EMAIL",
    "PHONE",
    "EMAIL_OPTIN",
    "IS_DONOR",
    "IS_VOLUNTEER",
    "GENDER",
];
const ELECTIONS: &[&str] = &[
    "PRIMARY-05/02/2006",
    "GENERAL-11/07/2006",
    "PRIMARY-03/04/2008",
    "GENERAL-11/04/2008",
    "PRIMARY-05/05/2009",
    "GENERAL-11/03/2009",
    "PRIMARY-05/04/2010",
    "GENERAL-11/02/2010",
    "PRIMARY-05/03/2011",
    "GENERAL-11/08/2011",
    "PRIMARY-03/06/2012",
    "GENERAL-11/06/2012",
    "PRIMARY-05/07/2013",
    "GENERAL-11/05/2013",
    "PRIMARY-05/06/2014",
    "GENERAL-11/04/2014",
    "PRIMARY-05/05/2015",
    "GENERAL-11/03/2015",
];

/// The 70 column names.
pub fn header() -> Vec<&'static str> {
    let mut h: Vec<&str> = BASE_COLUMNS.to_vec();
    h.extend_from_slice(ELECTIONS);
    h
}

/// The mapping that imports the synthetic file.
pub const MAPPING: &str = r#"[source]
name = "synthetic-voter-file"

[fields]
voter_id = "SOS_VOTERID"
first_name = "FIRST_NAME"
middle_name = "MIDDLE_NAME"
last_name = "LAST_NAME"
suffix = "SUFFIX"
email = "EMAIL"
phone = "PHONE"
address_line1 = "RESIDENTIAL_ADDRESS1"
address_line2 = "RESIDENTIAL_SECONDARY_ADDR"
city = "RESIDENTIAL_CITY"
state = "RESIDENTIAL_STATE"
zip = "RESIDENTIAL_ZIP"
county = "COUNTY_ID"
precinct = "PRECINCT_CODE"
email_consent = "EMAIL_OPTIN"

[custom]
party = "PARTY_AFFILIATION"
birth_date = "DATE_OF_BIRTH"
registered = "REGISTRATION_DATE"
voter_status = "VOTER_STATUS"
congressional_district = "CONGRESSIONAL_DISTRICT"
state_house_district = "STATE_REPRESENTATIVE_DISTRICT"
state_senate_district = "STATE_SENATE_DISTRICT"
ward = "WARD"
gender = "GENDER"

[tags]
always = ["voter-file"]

[[tags.from_column]]
column = "IS_DONOR"
tag = "donor"

[[tags.from_column]]
column = "IS_VOLUNTEER"
tag = "volunteer"

[[tags.from_column]]
column = "GENERAL-11/06/2012"
prefix = "voted:2012g:"
"#;

/// One synthetic row (`i` is the row number; the seed picks the campaign).
pub fn row(seed: u64, i: u64) -> Vec<String> {
    let mut r = Rng::new(seed ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let (county, city, zip3) = COUNTIES[(r.below(COUNTIES.len() as u64)) as usize];
    let county_no = COUNTIES.iter().position(|c| c.0 == county).unwrap_or(0) + 1;
    let precinct = format!("{}-{:03}", &county[..3], r.below(120) + 1);
    let first = r.pick(FIRST);
    let last = r.pick(LAST);
    let has_email = r.chance(45);
    let email = if has_email {
        format!(
            "{}.{}{}@example.{}",
            first.to_lowercase(),
            last.to_lowercase(),
            i,
            if r.chance(50) { "org" } else { "net" }
        )
    } else {
        String::new()
    };
    let phone = if r.chance(35) {
        format!(
            "({}) {:03}-{:04}",
            200 + (i / 10_000_000) % 800,
            200 + (i / 10_000) % 800,
            i % 10_000
        )
    } else {
        String::new()
    };
    let optin = if has_email {
        if r.chance(85) {
            "subscribed"
        } else {
            "unsubscribed"
        }
    } else {
        ""
    };
    let donor = if r.chance(8) { "" } else { "x" };
    let donor = if donor.is_empty() { "yes" } else { "" };
    let volunteer = if r.chance(3) { "yes" } else { "" };
    let mut v: Vec<String> = Vec::with_capacity(70);
    let house = r.below(9000) + 1;
    let street = r.pick(STREETS);
    let zip = format!("{zip3}{:02}", r.below(100));
    let dob = format!(
        "{}-{:02}-{:02}",
        1935 + r.below(72),
        r.below(12) + 1,
        r.below(28) + 1
    );
    let reg = format!(
        "{}-{:02}-{:02}",
        1970 + r.below(55),
        r.below(12) + 1,
        r.below(28) + 1
    );
    let apt = if r.chance(15) {
        format!("Apt {}", r.below(40) + 1)
    } else {
        String::new()
    };
    v.push(format!("OH{:010}", i + 1));
    v.push(county_no.to_string());
    v.push(county.to_string());
    v.push(last.to_string());
    v.push(first.to_string());
    v.push(if r.chance(60) {
        r.pick(FIRST)[..1].to_string()
    } else {
        String::new()
    });
    v.push(if r.chance(3) {
        "JR".into()
    } else {
        String::new()
    });
    v.push(dob);
    v.push(reg);
    v.push(if r.chance(92) {
        "ACTIVE".into()
    } else {
        "CONFIRMATION".into()
    });
    v.push(r.pick(PARTIES).to_string());
    v.push(format!("{house} {street}"));
    v.push(apt);
    v.push(city.to_string());
    v.push("OH".into());
    v.push(zip.clone());
    v.push(format!("{:04}", r.below(10_000)));
    v.push(String::new());
    v.push(String::new());
    for _ in 0..8 {
        v.push(String::new()); // mailing address columns, mostly empty in real files
    }
    for col in &BASE_COLUMNS[27..38] {
        v.push(match *col {
            "CONGRESSIONAL_DISTRICT" => format!("{:02}", r.below(15) + 1),
            "CITY" => city.to_uppercase(),
            _ => {
                if r.chance(30) {
                    format!("{} {}", city.to_uppercase(), r.below(9) + 1)
                } else {
                    String::new()
                }
            }
        });
    }
    v.push(format!("PRECINCT {precinct}"));
    v.push(precinct);
    v.push(format!("{}", r.below(11) + 1));
    v.push(format!("{:03}", r.below(99) + 1));
    v.push(format!("{:02}", r.below(33) + 1));
    v.push(if r.chance(20) {
        format!("{} TWP", last.to_uppercase())
    } else {
        String::new()
    });
    v.push(String::new());
    v.push(if r.chance(40) {
        format!("WARD {}", r.below(12) + 1)
    } else {
        String::new()
    });
    v.push(email);
    v.push(phone);
    v.push(optin.to_string());
    v.push(donor.to_string());
    v.push(volunteer.to_string());
    v.push(if r.chance(50) { "F".into() } else { "M".into() });
    for _ in ELECTIONS {
        v.push(if r.chance(45) {
            r.pick(&["D", "R", "X"]).to_string()
        } else {
            String::new()
        });
    }
    v
}

/// Writes `rows` synthetic rows as CSV; `progress` is called every 10,000 rows.
pub fn write_csv(
    path: &std::path::Path,
    seed: u64,
    rows: u64,
    progress: &dyn Fn(u64),
) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    let mut w =
        csv::WriterBuilder::new().from_writer(std::io::BufWriter::with_capacity(1 << 20, f));
    w.write_record(header())?;
    for i in 0..rows {
        w.write_record(row(seed, i))?;
        if i % 10_000 == 0 {
            progress(i);
        }
    }
    w.flush()?;
    let mut inner = w
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    inner.flush()
}

/// The columns the mapping imports, as raw text: what the benchmark's baseline inserts.
pub const BASELINE_COLUMNS: usize = 24;

pub fn baseline_row(seed: u64, i: u64) -> Vec<String> {
    let r = row(seed, i);
    // voter id, county, last, first, middle, suffix, dob, registered, status, party,
    // address, apt, city, state, zip, ..., precinct, email, phone, optin, donor, volunteer, gender
    [
        0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 31, 41, 45, 39, 46, 47, 48, 49, 50,
    ]
    .iter()
    .map(|&c| r[c].clone())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seventy_columns_and_deterministic() {
        assert_eq!(header().len(), 70);
        assert_eq!(row(7, 3), row(7, 3));
        assert_ne!(row(7, 3), row(8, 3));
        for i in 0..200 {
            assert_eq!(row(1, i).len(), 70, "row {i}");
        }
    }

    #[test]
    fn mapping_parses_and_rows_resolve() {
        let m = crate::mapping::Mapping::parse(MAPPING).unwrap();
        let h: Vec<String> = header().into_iter().map(String::from).collect();
        for c in m.columns() {
            assert!(h.iter().any(|x| x == c), "{c}");
        }
    }
}
