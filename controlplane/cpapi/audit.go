package cpapi

// AuditVerification is the result of checking the audit chain.
type AuditVerification struct {
	// OK is true when every record links to its predecessor, every hash
	// recomputes and the newest record matches the recorded head.
	OK bool `json:"ok"`
	// Records is the number of records checked.
	Records int64 `json:"records"`
	// HeadSeq and HeadHash are the recorded head of the chain.
	HeadSeq  int64  `json:"head_seq"`
	HeadHash string `json:"head_hash"`
	// BadSeq is the sequence number where verification failed (0 if OK or
	// the failure concerns the head).
	BadSeq int64 `json:"bad_seq,omitempty"`
	// Problem explains the failure.
	Problem string `json:"problem,omitempty"`
}
