import os

if os.environ.get("NTN_FILE_NO_PWRITE"):  # the plugin as on a platform without positional writes (Windows)
    del os.pwrite, os.pread
