-- Geography with consent: segments count county/precinct audiences by consent
-- state from the index alone, without reading each person's row.
DROP INDEX IF EXISTS people_county;
CREATE INDEX people_geo_consent ON people (county, precinct, email_consent, sms_consent);
