"""The user-facing experiments: `bash experiments/run_mpo2.sh` and friends."""
