-- Indexes that cost every import a write and served no query: segments scan
-- consent, households are not matched by address key yet, and tag conditions
-- probe the (person_id, tag_id) primary key person by person.
DROP INDEX IF EXISTS people_addr;
DROP INDEX IF EXISTS people_email_consent;
DROP INDEX IF EXISTS person_tags_tag;
