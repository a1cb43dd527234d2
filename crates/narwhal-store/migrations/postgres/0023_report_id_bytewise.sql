-- Report ids are opaque client-made keys, only ever compared for equality: their
-- unique index compares them byte by byte (the "C" collation) instead of through the
-- database's locale, which cost a locale comparison at every step of every lookup and
-- conflict check of the ingest.
ALTER TABLE turnout_reports ALTER COLUMN report_id TYPE TEXT COLLATE "C";
