"""Study schedules: thin layers over the data, model, training and evaluation packages."""
