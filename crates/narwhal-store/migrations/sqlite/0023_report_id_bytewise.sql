-- PostgreSQL compares report ids byte by byte from now on (the "C" collation); SQLite
-- already does (BINARY), so nothing changes here.
SELECT 1;
