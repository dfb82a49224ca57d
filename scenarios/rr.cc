// The rr scenario (placeholder until it lands).
