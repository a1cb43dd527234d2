-- A donor who saved a card on the donation page may give again from the same device in
-- one tap: the device holds a random token (a cookie), stored here only as its hash,
-- with the person and the saved card it may charge. Forgetting the device deletes it.
CREATE TABLE donor_devices (
    token_hash TEXT PRIMARY KEY,
    person_id BIGINT NOT NULL,
    saved_method_id BIGINT NOT NULL REFERENCES saved_payment_methods (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX donor_devices_person ON donor_devices (person_id);
