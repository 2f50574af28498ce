from backup_pipeline_tests.bench.harness import main

main()
