from loadtest.peers.driver import main

main()
