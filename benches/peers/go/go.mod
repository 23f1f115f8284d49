module baresse/peers/go

go 1.19
