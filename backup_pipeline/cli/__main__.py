from backup_pipeline.cli import main

main()
