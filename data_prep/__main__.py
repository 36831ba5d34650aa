from streamtune.stages.data_prep.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
