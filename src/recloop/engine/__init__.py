"""The feedback loop: candidate sources, blending and re-ranking, bandits, off-policy
estimates and gap analysis."""
