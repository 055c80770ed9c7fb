"""Running parties: the multiprocess launcher and cost accounting."""
