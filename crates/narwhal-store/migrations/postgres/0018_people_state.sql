-- SQLite gets an index on people (state) here. PostgreSQL counts a state-wide segment
-- with a parallel scan well within its budget, and another index would cost every
-- import a write, so nothing changes on this backend.
SELECT 1;
