-- PostgreSQL only (a function that takes donors' locks and reads their totals in one
-- round trip); SQLite's single writer needs no locks.
SELECT 1;
